"""Password hashing (argon2id, bcrypt accepted and upgraded) and JWT access tokens."""

import asyncio
import hashlib
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.config import get_settings
from app.utils.gate import Gate
from app.utils.keys import Keyring, keyring

ALGORITHM = "HS256"
ACCESS_TOKEN_TYPE = "access"

# The first hasher hashes; the others only verify, and `verify_and_update` re-hashes with the first.
# Argon2id with OWASP's recommended floor (19 MiB, 2 passes, 1 lane): ~35 ms here, so a login
# costs little CPU while an offline guess stays expensive.
password_hash = PasswordHash((Argon2Hasher(time_cost=2, memory_cost=19456, parallelism=1), BcryptHasher()))
# Verifying against this keeps "unknown email" as slow as "wrong password".
_DUMMY_HASH = password_hash.hash("timing-equaliser-" + secrets.token_hex(8))


# Hashing is deliberately slow (tens of ms) and argon2 releases the GIL: run it in a thread, so the
# event loop keeps serving other requests. A bounded number at once (and a bounded queue): a flood
# of sign-ins then gets 503 `server_busy` instead of taking every core from the other endpoints.
# The hashing threads run at the lowest CPU priority (nice 19): when a core is contended, the event
# loop (every other request) gets it first, and a sign-in flood waits instead of slowing the rest.
HASHING_NICENESS = 19
_hashing: Gate | None = None
_hashers: ThreadPoolExecutor | None = None


def hashing_gate() -> Gate:
    global _hashing
    if _hashing is None:
        settings = get_settings()
        _hashing = Gate(
            settings.password_hash_concurrency,
            timeout=settings.password_hash_queue_timeout_seconds,
            max_waiting=settings.password_hash_max_waiting,
            what="password hashing",
        )
    return _hashing


def reset_hashing_gate() -> None:
    """Read the settings again on next use (tests that change them)."""
    global _hashing, _hashers
    if _hashers is not None:
        _hashers.shutdown(wait=False)
    _hashing = _hashers = None


def _lower_priority() -> None:
    """Linux gives each thread its own nice value; raising one's own needs no privilege."""
    with suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


def _hashing_threads() -> ThreadPoolExecutor:
    global _hashers
    if _hashers is None:
        _hashers = ThreadPoolExecutor(
            max(1, get_settings().password_hash_concurrency),
            thread_name_prefix="password-hashing",
            initializer=_lower_priority,
        )
    return _hashers


async def _hash_in_thread[T](work: Callable[..., T], *args: str) -> T:
    async with hashing_gate().held():
        return await asyncio.get_running_loop().run_in_executor(_hashing_threads(), work, *args)


async def hash_password(password: str) -> str:
    return await _hash_in_thread(password_hash.hash, password)


def _verify(password: str, hashed: str) -> tuple[bool, str | None]:
    try:
        return password_hash.verify_and_update(password, hashed)
    except ValueError:  # bcrypt refuses passwords over 72 bytes: such a password never matched
        return False, None


async def verify_password(password: str, hashed: str) -> tuple[bool, str | None]:
    """(valid, new hash when the stored one should be upgraded)."""
    return await _hash_in_thread(_verify, password, hashed)


async def burn_password_check(password: str) -> None:
    await _hash_in_thread(password_hash.verify, password, _DUMMY_HASH)


def random_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    jti: str
    role: str
    session_id: str  # the refresh-token family this access token was issued with
    issued_at: float
    expires_at: float


def create_access_token(
    user_id: uuid.UUID, role: str, *, session_id: str, now: datetime | None = None
) -> tuple[str, int]:
    settings = get_settings()
    issued = now or datetime.now(UTC)
    lifetime = settings.access_token_expire_minutes * 60
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "role": role,
        "typ": ACCESS_TOKEN_TYPE,
        "jti": uuid.uuid4().hex,
        "sid": session_id,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        # Sub-second iat so "tokens valid after" can cut between two tokens of the same second.
        "iat": issued.timestamp(),
        "nbf": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=lifetime)).timestamp()),
    }
    signer = keyring().current
    return jwt.encode(claims, signer.secret, algorithm=ALGORITHM, headers={"kid": signer.kid}), lifetime


def decode_access_token(token: str) -> AccessClaims:
    """Raise `jwt.InvalidTokenError` for anything but a valid, unexpired access token of ours.

    A token's signature and claims are checked once per process and the result remembered (a client
    presents the same token for its whole lifetime); expiry is checked on every use. Revocation is
    not a property of the token and stays with the caller (`auth.authenticate_access`).
    """
    settings = get_settings()
    claims = _verified_claims(token, keyring(), settings.jwt_audience, settings.jwt_issuer)
    if time.time() >= claims.expires_at:
        raise jwt.ExpiredSignatureError("Signature has expired")
    return claims


@lru_cache(maxsize=4096)  # invalid tokens raise, and exceptions are not cached
def _verified_claims(token: str, keys: Keyring, audience: str, issuer: str) -> AccessClaims:
    # Verified by the key the header names (a rotated-out key verifies until it is dropped); a token
    # naming no key of ours, or none at all, is refused.
    key = keys.find(jwt.get_unverified_header(token).get("kid"))
    if key is None:
        raise jwt.InvalidTokenError("not signed by a key of ours")
    claims = jwt.decode(
        token,
        key.secret,
        algorithms=[ALGORITHM],
        audience=audience,
        issuer=issuer,
        options={"require": ["sub", "exp", "iat", "nbf", "jti", "iss", "aud", "typ", "role", "sid"]},
    )
    if claims["typ"] != ACCESS_TOKEN_TYPE:
        raise jwt.InvalidTokenError("not an access token")
    try:
        user_id = uuid.UUID(claims["sub"])
    except (ValueError, TypeError) as exc:
        raise jwt.InvalidTokenError("bad subject") from exc
    return AccessClaims(
        user_id=user_id,
        jti=str(claims["jti"]),
        role=str(claims["role"]),
        session_id=str(claims["sid"]),
        issued_at=float(claims["iat"]),
        expires_at=float(claims["exp"]),
    )
