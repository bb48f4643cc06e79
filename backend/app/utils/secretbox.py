"""Small secrets kept at rest (TOTP secrets): AES-256-GCM under a key derived from `SECRET_KEY`.

The associated data binds a ciphertext to its row (the user id), so a value copied to another row
does not decrypt. A value is sealed under `SECRET_KEY` and opens under it or any key still listed in
`PREVIOUS_SECRET_KEYS`; once its key is dropped it is unreadable and its owner sets TOTP up again
(backend/README.md).
"""

import base64
import secrets
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.utils.keys import keyring

_VERSION = "v1"


@lru_cache
def _key(secret_key: str, purpose: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"c3po {purpose}".encode())
    return hkdf.derive(secret_key.encode())


def seal(plaintext: str, *, purpose: str, context: str) -> str:
    nonce = secrets.token_bytes(12)
    key = _key(keyring().current.secret.decode(), purpose)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), context.encode())
    return f"{_VERSION}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def open_sealed(token: str, *, purpose: str, context: str) -> str:
    """The plaintext, opened with the current key or a rotated-out one still listed;
    `cryptography.exceptions.InvalidTag` if none of them sealed it for this row."""
    version, _, body = token.partition(":")
    if version != _VERSION:
        raise ValueError(f"unknown sealed format {version!r}")
    raw = base64.urlsafe_b64decode(body)
    keys = keyring()
    for key in (keys.current, *keys.previous):
        try:
            return AESGCM(_key(key.secret.decode(), purpose)).decrypt(raw[:12], raw[12:], context.encode()).decode()
        except InvalidTag:
            continue
    raise InvalidTag
