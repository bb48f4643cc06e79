"""The signing keys: `SECRET_KEY` signs, each of `PREVIOUS_SECRET_KEYS` still verifies (rotation).

Every key is known by a `kid` derived from it (a digest, which reveals nothing of the key): access
tokens name theirs in the JWT header, sealed refresh successors in front of the seal, so each is
checked with the key that made it for as long as that key is listed, and refused once it is dropped.
"""

import hashlib
import hmac
from dataclasses import dataclass

from app.config import Settings, get_settings


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


_current: tuple[Settings, Keyring] | None = None


def keyring() -> Keyring:
    """The keys of the current settings: the same object while the settings object is the same (it
    serves as a cache key for verified tokens, so a change of keys forgets them)."""
    global _current
    settings = get_settings()
    if _current is None or _current[0] is not settings:
        current = signing_key(settings.secret_key)
        previous = tuple(signing_key(key) for key in dict.fromkeys(settings.previous_secret_keys))
        _current = settings, Keyring(current, tuple(key for key in previous if key.kid != current.kid))
    return _current[1]
