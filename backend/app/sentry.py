"""Sentry for the API and the worker alike, when `SENTRY_DSN` is set, with one scrubbing for both.

No default PII (no IP addresses, cookies or request bodies). Sentry's own scrubber removes values
under secret-looking keys (extended with ours: `new_password`, `refresh_token`, ...), and
`scrub_event` then masks what the remaining strings may carry (messages, exception values,
breadcrumbs, the request's URL): tokens and passwords as the log redaction does
(`app.utils.redact`), and email addresses, which are personal data.
"""

import re
from collections.abc import Sequence
from typing import Any

from app.config import Settings
from app.utils.redact import redact_path, redact_text

EXTRA_DENYLIST = (
    "new_password",
    "current_password",
    "hashed_password",
    "access_token",
    "refresh_token",
    "secret_key",
    "mail_password",
    "metrics_token",
    "idempotency-key",
)
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_MAX_DEPTH = 12


def _scrub(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _EMAIL.sub("[email]", redact_text(value))
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {key: _scrub(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, depth + 1) for item in value]
    return value


def scrub_event(event: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """`before_send` (and `before_breadcrumb`): the event with every string masked, and token-like
    segments of the request's path too (only there: ids and trace ids elsewhere look alike)."""
    scrubbed = _scrub(event)
    request = scrubbed.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str):
        request["url"] = redact_path(request["url"])
    return scrubbed


def init_sentry(settings: Settings, *, integrations: Sequence[Any] = ()) -> bool:
    """Start the SDK when a DSN is set; True if it was started."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        send_default_pii=False,
        event_scrubber=EventScrubber(denylist=[*DEFAULT_DENYLIST, *EXTRA_DENYLIST], recursive=True),
        before_send=scrub_event,  # type: ignore[arg-type]
        before_breadcrumb=scrub_event,  # type: ignore[arg-type]
        integrations=list(integrations),
    )
    return True
