"""Session state in Redis: refresh-token families (rotation, reuse detection) and the access-token deny-list.

Keys:
  refresh:{sha256(token)}  -> hash {user, family, state: live|rotated}, expiring with the family
  family:{id}              -> hash {user, expires, revoked?}
  user-families:{user}     -> set of family ids (for logout-all)
  denied-jti:{jti}         -> "1" until the access token would have expired
"""

import time
import uuid
from dataclasses import dataclass

from app.config import get_settings
from app.errors import InvalidRefreshToken, TokenReused
from app.redis import get_redis
from app.utils.security import random_token, token_digest


@dataclass(frozen=True)
class RefreshGrant:
    user_id: uuid.UUID
    family: str
    valid_from: float  # when the family began, or was last reaffirmed by a password change
    expires: float  # the family's absolute end


def _ttl_until(expires: float) -> int:
    return max(1, int(expires - time.time()))


async def start_family(user_id: uuid.UUID) -> tuple[str, str]:
    """A new login: a new family of refresh tokens with an absolute expiry."""
    redis = get_redis()
    family = uuid.uuid4().hex
    now = time.time()
    expires = now + get_settings().refresh_token_expire_days * 86400
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(f"family:{family}", mapping={"user": str(user_id), "started": now, "expires": expires})
        pipe.expireat(f"family:{family}", int(expires) + 1)
        pipe.sadd(f"user-families:{user_id}", family)
        pipe.expire(f"user-families:{user_id}", get_settings().refresh_token_expire_days * 86400)
        await pipe.execute()
    return family, await _issue(user_id, family, expires)


async def _issue(user_id: uuid.UUID, family: str, expires: float) -> str:
    token = random_token()
    key = f"refresh:{token_digest(token)}"
    redis = get_redis()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"user": str(user_id), "family": family, "state": "live"})
        pipe.expireat(key, int(expires) + 1)
        await pipe.execute()
    return token


# Atomically move a live token to "rotated"; answers its old state so exactly one caller wins.
_ROTATE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'live' then redis.call('HSET', KEYS[1], 'state', 'rotated') end
return state
"""


async def check(token: str) -> RefreshGrant:
    """What a refresh token grants, without spending it; presenting a rotated one revokes its whole family."""
    redis = get_redis()
    record = await redis.hgetall(f"refresh:{token_digest(token)}")
    if not record:
        raise InvalidRefreshToken()
    family = await redis.hgetall(f"family:{record['family']}")
    if not family or family.get("revoked"):
        raise InvalidRefreshToken()
    if record.get("state") != "live":
        await revoke_family(record["family"])
        raise TokenReused()
    return _grant(record, family)


async def rotate(token: str, grant: RefreshGrant) -> str:
    """Spend a checked refresh token and hand out its successor; of two concurrent spends only one wins,
    and the loser is a reuse: the whole family is revoked."""
    state = await get_redis().eval(_ROTATE, 1, f"refresh:{token_digest(token)}")
    if state is None:  # expired with its family a moment ago
        raise InvalidRefreshToken()
    if state != "live":
        await revoke_family(grant.family)
        raise TokenReused()
    return await _issue(grant.user_id, grant.family, grant.expires)


async def peek(token: str) -> RefreshGrant | None:
    """The family a refresh token belongs to, if it is still live (no rotation)."""
    redis = get_redis()
    record = await redis.hgetall(f"refresh:{token_digest(token)}")
    if not record or record.get("state") != "live":
        return None
    family = await redis.hgetall(f"family:{record['family']}")
    if not family or family.get("revoked"):
        return None
    return _grant(record, family)


# Mark a family only while it exists: a plain HSET on a family that just expired would recreate it forever.
_MARK_FAMILY = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""


async def revoke_family(family: str) -> None:
    await get_redis().eval(_MARK_FAMILY, 1, f"family:{family}", "revoked", "1")


async def revoke_all_families(user_id: uuid.UUID, *, keep: str | None = None) -> None:
    redis = get_redis()
    families = await redis.smembers(f"user-families:{user_id}")
    for family in families - {keep}:
        await revoke_family(family)
        await redis.srem(f"user-families:{user_id}", family)


async def reaffirm_family(family: str) -> None:
    """Let one session outlive a "revoke everything before now" (the session that changed the password)."""
    await get_redis().eval(_MARK_FAMILY, 1, f"family:{family}", "reaffirmed", repr(time.time()))


def _grant(record: dict[str, str], family: dict[str, str]) -> RefreshGrant:
    return RefreshGrant(uuid.UUID(record["user"]), record["family"], _valid_from(family), float(family["expires"]))


def _valid_from(family: dict[str, str]) -> float:
    return max(float(family["started"]), float(family.get("reaffirmed", 0)))


async def deny_access_token(jti: str, expires_at: float) -> None:
    await get_redis().set(f"denied-jti:{jti}", "1", ex=_ttl_until(expires_at))


async def is_access_token_denied(jti: str) -> bool:
    return bool(await get_redis().exists(f"denied-jti:{jti}"))
