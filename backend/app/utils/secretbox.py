"""Small secrets kept at rest (TOTP secrets): AES-256-GCM under a key derived from `SECRET_KEY`.

The associated data binds a ciphertext to its row (the user id), so a value copied to another row
does not decrypt. Rotating `SECRET_KEY` makes stored secrets unreadable: their owners set TOTP up
again (backend/README.md).
"""

import base64
import secrets
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.config import get_settings

_VERSION = "v1"


@lru_cache
def _key(secret_key: str, purpose: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"c3po {purpose}".encode())
    return hkdf.derive(secret_key.encode())


def seal(plaintext: str, *, purpose: str, context: str) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_key(get_settings().secret_key, purpose)).encrypt(nonce, plaintext.encode(), context.encode())
    return f"{_VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def open_sealed(token: str, *, purpose: str, context: str) -> str:
    """The plaintext; `cryptography.exceptions.InvalidTag` if it was sealed under another key or row."""
    version, _, body = token.partition(":")
    if version != _VERSION:
        raise ValueError(f"unknown sealed format {version!r}")
    raw = base64.urlsafe_b64decode(body)
    aead = AESGCM(_key(get_settings().secret_key, purpose))
    return aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
