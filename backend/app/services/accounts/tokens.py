"""Session state in Redis: refresh-token families (rotation, grace, reuse detection) and the access-token deny-list.

A refresh token reads `{family}.{secret}`: the family (the login, also the access token's `sid`)
is public, the secret is 32 random bytes. Keys (`{F}` is a Redis Cluster hash tag: everything one
login's steps touch together sits in one slot):
  family:{F}               -> hash {user, started, expires, revoked?, reaffirmed?}, expiring with the login
  refresh:{F}:<sha256>     -> hash {user, state: live|rotated, rotated_at?, successor?}
  denied-jti:{F}:<jti>     -> "1" until the access token (of login F) would have expired
  user-families:<user>     -> set of family ids (for logout-all), read and written on its own

`successor` is the next token's secret XOR-ed with a key derived (HMAC with the signing key) from the
rotated token itself, behind the `kid` of that signing key: only whoever presents that token can
recover it, and no token is stored in a readable form. It lets a token presented again within
REFRESH_REUSE_GRACE_SECONDS of its rotation (two tabs refreshing at once) answer the same successor
instead of ending the login; a seal made just before a key rotation is opened with the previous key.
"""

import re
import secrets
import time
import uuid
from dataclasses import dataclass

from app.config import get_settings
from app.errors import InvalidRefreshToken, TokenReused
from app.redis import get_redis
from app.utils import b64url
from app.utils.keys import SigningKey, keyring
from app.utils.security import token_digest

_SECRET_BYTES = 32
_TOKEN = re.compile(r"^([0-9a-f]{32})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class RefreshGrant:
    user_id: uuid.UUID
    family: str
    valid_from: float  # when the family began, or was last reaffirmed by a password change
    expires: float  # the family's absolute end


def family_key(family: str) -> str:
    return f"family:{{{family}}}"


def _token_key(family: str, token: str) -> str:
    return f"refresh:{{{family}}}:{token_digest(token)}"


def denied_key(family: str, jti: str) -> str:
    return f"denied-jti:{{{family}}}:{jti}"


def _user_key(user_id: uuid.UUID) -> str:
    return f"user-families:{user_id}"


def _family_of(token: str) -> str:
    match = _TOKEN.match(token)
    if match is None:
        raise InvalidRefreshToken()
    return match.group(1)


def _ttl_until(expires: float) -> int:
    return max(1, int(expires - time.time()))


def _new_token(family: str) -> tuple[str, bytes]:
    secret = secrets.token_bytes(_SECRET_BYTES)
    return f"{family}.{b64url.encode(secret)}", secret


def _pad(key: SigningKey, presented: str) -> bytes:
    return key.mac(b"refresh-successor", presented.encode())


def _seal(presented: str, secret: bytes) -> str:
    key = keyring().current
    return f"{key.kid}:{bytes(a ^ b for a, b in zip(secret, _pad(key, presented), strict=True)).hex()}"


def _unseal(presented: str, family: str, sealed: str) -> str:
    kid, _, seal = sealed.rpartition(":")
    key = keyring().find(kid) if kid else keyring().current  # a seal from before key ids: the key of then
    if key is None:  # sealed by a key dropped since (rotated out longer ago than any grace window)
        raise InvalidRefreshToken()
    secret = bytes(a ^ b for a, b in zip(bytes.fromhex(seal), _pad(key, presented), strict=True))
    return f"{family}.{b64url.encode(secret)}"


async def start_family(user_id: uuid.UUID) -> tuple[str, str]:
    """A new login: a new family of refresh tokens with an absolute expiry; (family, first token)."""
    family = uuid.uuid4().hex
    now = time.time()
    expires = now + get_settings().refresh_token_expire_days * 86400
    token, _ = _new_token(family)
    redis = get_redis()
    # Two slots, in this order: a family that logout-all cannot find must never exist.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.sadd(_user_key(user_id), family)
        pipe.expire(_user_key(user_id), get_settings().refresh_token_expire_days * 86400)
        await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(family_key(family), mapping={"user": str(user_id), "started": now, "expires": expires})
        pipe.expireat(family_key(family), int(expires) + 1)
        pipe.hset(_token_key(family, token), mapping={"user": str(user_id), "state": "live"})
        pipe.expireat(_token_key(family, token), int(expires) + 1)
        await pipe.execute()
    return family, token


# One atomic step per presented token: rotate a live one (storing its sealed successor), answer the
# sealed successor of one rotated within the grace window, else revoke the family (reuse).
_ROTATE = """
local family = redis.call('HMGET', KEYS[1], 'expires', 'revoked')
if not family[1] or family[2] then return {'invalid'} end
local token = redis.call('HMGET', KEYS[2], 'state', 'rotated_at', 'successor')
if not token[1] then return {'invalid'} end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
if token[1] == 'live' then
  redis.call('HSET', KEYS[2], 'state', 'rotated', 'rotated_at', tostring(now), 'successor', ARGV[2])
  redis.call('HSET', KEYS[3], 'user', ARGV[3], 'state', 'live')
  redis.call('EXPIREAT', KEYS[3], ARGV[4])
  return {'rotated'}
end
if token[3] and now - tonumber(token[2]) <= tonumber(ARGV[1]) then return {'grace', token[3]} end
redis.call('HSET', KEYS[1], 'revoked', '1')
return {'reused'}
"""


async def check(token: str) -> RefreshGrant:
    """What a refresh token grants, without spending it: 400 unless its login is still live."""
    family = _family_of(token)
    async with get_redis().pipeline(transaction=False) as pipe:
        pipe.hgetall(_token_key(family, token))
        pipe.hgetall(family_key(family))
        record, login = await pipe.execute()
    if not record or not login or login.get("revoked"):
        raise InvalidRefreshToken()
    return _grant(record, family, login)


async def rotate(token: str, grant: RefreshGrant) -> str:
    """Spend a checked refresh token; its successor. Concurrent spends within the grace window all get the
    same successor; a spend after it is a reuse, and the whole family is revoked (TokenReused)."""
    candidate, secret = _new_token(grant.family)
    outcome = await get_redis().eval(
        _ROTATE,
        3,
        family_key(grant.family),
        _token_key(grant.family, token),
        _token_key(grant.family, candidate),
        get_settings().refresh_reuse_grace_seconds,
        _seal(token, secret),
        str(grant.user_id),
        int(grant.expires) + 1,
    )
    if outcome[0] == "rotated":
        return candidate
    if outcome[0] == "grace":
        return _unseal(token, grant.family, outcome[1])
    if outcome[0] == "reused":
        raise TokenReused()
    raise InvalidRefreshToken()  # revoked or expired a moment ago


async def peek(token: str) -> RefreshGrant | None:
    """The login a refresh token belongs to, if that login is still live (nothing is spent)."""
    try:
        return await check(token)
    except InvalidRefreshToken:
        return None


# Mark a family only while it exists: a plain HSET on a family that just expired would recreate it forever.
_MARK_FAMILY = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""


async def revoke_family(family: str) -> None:
    await get_redis().eval(_MARK_FAMILY, 1, family_key(family), "revoked", "1")


async def revoke_all_families(user_id: uuid.UUID, *, keep: str | None = None) -> None:
    redis = get_redis()
    families = await redis.smembers(_user_key(user_id))
    for family in families - {keep}:
        await revoke_family(family)
        await redis.srem(_user_key(user_id), family)


async def reaffirm_family(family: str) -> None:
    """Let one session outlive a "revoke everything before now" (the session that changed the password)."""
    await get_redis().eval(_MARK_FAMILY, 1, family_key(family), "reaffirmed", repr(time.time()))


def _grant(record: dict[str, str], family: str, login: dict[str, str]) -> RefreshGrant:
    valid_from = max(float(login["started"]), float(login.get("reaffirmed", 0)))
    return RefreshGrant(uuid.UUID(record["user"]), family, valid_from, float(login["expires"]))


async def deny_access_token(family: str, jti: str, expires_at: float) -> None:
    await get_redis().set(denied_key(family, jti), "1", ex=_ttl_until(expires_at))
