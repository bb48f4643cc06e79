"""Secrets out of log lines and Sentry events: `app.utils.redact` and `app.sentry.scrub_event`."""

import pytest

from app.sentry import scrub_event
from app.utils.redact import REDACTED, redact_path, redact_text

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
TOKEN = "pN0v3rYl0ngT0k3nWithSymbols-_0123456789abcdefXYZ"  # secrets.token_urlsafe(32) looks like this
UUID = "0b7c4cbb-4b9a-4a4f-9d5e-6b7c9a1d2e3f"


class TestRedactText:
    @pytest.mark.parametrize(
        ("line", "secret"),
        [
            (f'127.0.0.1:5000 - "WebSocket /api/v1/ws?token={JWT}" [accepted]', JWT),
            (f"GET /api/v1/ws?x=1&token={TOKEN}&y=2", TOKEN),
            ("https://app.test/reset-password?token=abc123&next=/", "abc123"),
            ('{"refresh_token": "fam.secret-value", "detail": "ok"}', "fam.secret-value"),
            ('{"new_password": "a \\"quoted\\" one"}', "quoted"),
            ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
            (f"a bare {JWT} in a message", JWT),
        ],
    )
    def test_masks_the_secret(self, line, secret):
        masked = redact_text(line)
        assert secret not in masked and REDACTED in masked

    def test_leaves_ordinary_text_alone(self):
        line = f"GET /api/v1/appointments/{UUID} 200 3.1ms code=slot_unavailable"
        assert redact_text(line) == line


class TestRedactPath:
    @pytest.mark.parametrize(
        "path",
        [f"/api/v1/auth/verify-email/{TOKEN}", f"/api/v1/auth/{JWT}", f"/x/{UUID.replace('-', '')}.{TOKEN}"],
    )
    def test_masks_token_like_segments(self, path):
        masked = redact_path(path)
        assert TOKEN not in masked and JWT not in masked and REDACTED in masked

    @pytest.mark.parametrize(
        "path", ["/api/v1/users/me", f"/api/v1/appointments/{UUID}", f"/api/v1/appointments/{UUID}.ics"]
    )
    def test_keeps_ids_and_short_paths(self, path):
        assert redact_path(path) == path


class TestScrubEvent:
    def test_masks_every_string_and_the_path_of_the_url(self):
        event = {
            "event_id": "a" * 32,
            "message": f"outbox 7 given up: SMTPRecipientsRefused: {{'ada@example.org': (550, 'no')}} token={TOKEN}",
            "exception": {"values": [{"type": "ValueError", "value": f"bad {JWT}"}]},
            "breadcrumbs": {"values": [{"message": f"POST /auth/login password={TOKEN}"}]},
            "request": {"url": f"http://api.test/api/v1/auth/verify-email/{TOKEN}", "query_string": f"token={TOKEN}"},
        }

        scrubbed = repr(scrub_event(event))

        for secret in (TOKEN, JWT, "ada@example.org"):
            assert secret not in scrubbed
        assert "a" * 32 in scrubbed  # ids are kept: Sentry needs them
