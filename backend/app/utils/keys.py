"""The signing keys: `SECRET_KEY` signs, each of `PREVIOUS_SECRET_KEYS` still verifies (rotation).

Every key is known by a `kid` derived from it (a digest, which reveals nothing of the key): access
tokens name theirs in the JWT header, sealed refresh successors in front of the seal, so each is
checked with the key that made it for as long as that key is listed, and refused once it is dropped.
"""

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

from app.config import get_settings


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: bytes

    def mac(self, purpose: bytes, message: bytes) -> bytes:
        """HMAC-SHA256 of `message` under a key derived for `purpose` (one key, many uses kept apart)."""
        return hmac.new(self.secret, purpose + b"\x00" + message, hashlib.sha256).digest()


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: cheap as a cache key
class Keyring:
    current: SigningKey
    previous: tuple[SigningKey, ...]

    def find(self, kid: object) -> SigningKey | None:
        """The key a token names, if it is still one of ours."""
        for key in (self.current, *self.previous):
            if key.kid == kid:
                return key
        return None


def key_id(secret: str) -> str:
    return hashlib.sha256(b"c3po key id\x00" + secret.encode()).hexdigest()[:16]


def signing_key(secret: str) -> SigningKey:
    return SigningKey(key_id(secret), secret.encode())


@lru_cache(maxsize=8)
def _keyring(current: str, previous: tuple[str, ...]) -> Keyring:
    return Keyring(signing_key(current), tuple(signing_key(key) for key in previous if key != current))


def keyring() -> Keyring:
    """The keys of the current settings (the same object while they do not change)."""
    settings = get_settings()
    return _keyring(settings.secret_key, tuple(settings.previous_secret_keys))
