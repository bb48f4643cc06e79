"""Manage-link tokens: one canonical string per (appointment, client, actions, expiry), signed for that
purpose only; anything else reads as no token at all."""

import base64
import uuid
from datetime import UTC, datetime

from app.utils import manage_tokens
from app.utils.manage_tokens import EVERY_ACTION, Action, ManageClaims

APPOINTMENT, CLIENT = uuid.uuid4(), uuid.uuid4()
END = datetime(2030, 6, 3, 10, 0, tzinfo=UTC)


def test_reads_back_what_it_signed():
    token = manage_tokens.issue(APPOINTMENT, CLIENT, END, Action.view | Action.cancel)

    assert len(token) == manage_tokens.TOKEN_LENGTH == 88
    assert manage_tokens.read(token) == ManageClaims(APPOINTMENT, CLIENT, Action.view | Action.cancel, END)
    assert manage_tokens.read(manage_tokens.issue(APPOINTMENT, CLIENT, END)).actions == EVERY_ACTION


def test_anything_else_is_no_token():
    token = manage_tokens.issue(APPOINTMENT, CLIENT, END)
    last = token[-1]
    # The same bytes spelled otherwise (the unused low bits of the last character) are refused too.
    other_spelling = token[:-1] + chr(ord(last) ^ 1)
    for bad in (
        "",
        token[:-1],
        token + "A",
        other_spelling,
        token[:-1] + "!",
        token[:-2] + "==",
        "é" * 88,
        token[:10] + ("B" if token[10] == "A" else "A") + token[11:],
    ):
        assert manage_tokens.read(bad) is None, bad


def test_another_purposes_signature_is_no_token():
    token = manage_tokens.issue(APPOINTMENT, CLIENT, END)
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    raw[0] = 2  # a version we never issued, signed properly
    key = manage_tokens.keyring().current
    body = bytes(raw[: manage_tokens._BODY.size])
    forged = base64.urlsafe_b64encode(body + manage_tokens._mac(key, body)).rstrip(b"=").decode()
    assert manage_tokens.read(forged) is None


def test_the_page_links():
    assert manage_tokens.page_url(APPOINTMENT).endswith(f"/appointments/{APPOINTMENT}")
    url = manage_tokens.manage_url(APPOINTMENT, CLIENT, END)
    assert url.startswith(manage_tokens.page_url(APPOINTMENT) + "?token=")
    assert manage_tokens.read(url.rpartition("=")[2]) is not None
