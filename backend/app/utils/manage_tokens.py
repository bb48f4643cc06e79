"""Manage-link tokens: what lets a client view, cancel or reschedule one appointment without signing in.

A token is 66 bytes, URL-safe base64 (88 characters, so `redact_path` masks it in every log line):

    version (1) | kid (8) | appointment id (16) | client id (16) | actions (1) | expires (8) | mac (16)

The MAC is HMAC-SHA256 (truncated to 128 bits) under the keyring key named by `kid`, derived for the
purpose "manage link", so no other token of ours (access JWT, refresh token, sealed successor) can
pass for one, nor one of these for them: they differ in shape and in the key their MAC is made with.
`read` checks only the signature; whether the appointment still lets it in (live, not over, same
client) is the booking service's check (`services/booking/manage_links.py`).

Here, not in the booking package: the emails (messaging) mint links, and messaging never calls booking.
"""

import hmac
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntFlag

from app.config import get_settings
from app.utils import b64url
from app.utils.keys import SigningKey, keyring

PURPOSE = b"manage link"
VERSION = 1
_BODY = struct.Struct(">B8s16s16sBQ")
_MAC_BYTES = 16
TOKEN_BYTES = _BODY.size + _MAC_BYTES
TOKEN_LENGTH = len(b64url.encode(bytes(TOKEN_BYTES)))


class Action(IntFlag):
    view = 1
    cancel = 2
    reschedule = 4


EVERY_ACTION = Action.view | Action.cancel | Action.reschedule


@dataclass(frozen=True, slots=True)
class ManageClaims:
    appointment_id: uuid.UUID
    client_id: uuid.UUID
    actions: Action
    expires_at: datetime


def _mac(key: SigningKey, body: bytes) -> bytes:
    return key.mac(PURPOSE, body)[:_MAC_BYTES]


def issue(appointment_id: uuid.UUID, client_id: uuid.UUID, expires_at: datetime, actions: Action = EVERY_ACTION) -> str:
    """A token for this appointment and client, good until `expires_at` (the appointment's end)."""
    key = keyring().current
    expires = int(expires_at.timestamp())
    body = _BODY.pack(
        VERSION, bytes.fromhex(key.kid), appointment_id.bytes, client_id.bytes, int(actions), max(expires, 0)
    )
    return b64url.encode(body + _mac(key, body))


def read(token: str) -> ManageClaims | None:
    """The claims of a token we signed with a key still on the keyring; None for anything else."""
    raw = b64url.decode(token) if len(token) == TOKEN_LENGTH else None
    if raw is None or len(raw) != TOKEN_BYTES:
        return None
    body, mac = raw[: _BODY.size], raw[_BODY.size :]
    version, kid, appointment, client, actions, expires = _BODY.unpack(body)
    key = keyring().find(kid.hex())
    if version != VERSION or key is None or not hmac.compare_digest(mac, _mac(key, body)):
        return None
    return ManageClaims(
        uuid.UUID(bytes=appointment),
        uuid.UUID(bytes=client),
        Action(actions & EVERY_ACTION),
        datetime.fromtimestamp(expires, UTC),
    )


def page_url(appointment_id: uuid.UUID) -> str:
    """The front end's page of an appointment (what a signed-in reader, e.g. its staff member, opens)."""
    return f"{get_settings().frontend_url}/appointments/{appointment_id}"


def manage_url(appointment_id: uuid.UUID, client_id: uuid.UUID, ends_at: datetime) -> str:
    """The same page with a token that lets its client in without signing in (a credential)."""
    return f"{page_url(appointment_id)}?token={issue(appointment_id, client_id, ends_at)}"
