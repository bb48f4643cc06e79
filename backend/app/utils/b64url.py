"""Unpadded URL-safe base64, the spelling of the tokens we put in URLs."""

import base64
import binascii


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(token: str) -> bytes | None:
    """The bytes of `token`, or None unless it is their one canonical spelling (no padding, no
    stray bits), so one token is never accepted under two spellings."""
    if not token.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if encode(raw) == token else None
