"""Moving-window rate limits in Redis (`limits`), shared by every API process."""

import hashlib
import time
from collections.abc import Awaitable
from urllib.parse import urlsplit

from limits import RateLimitItem, parse
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from loguru import logger
from redis.exceptions import RedisError

from app.config import get_settings
from app.errors import RateLimited
from app.metrics import RATE_LIMIT_REFUSALS

_limiter: MovingWindowRateLimiter | None = None
_storage: RedisStorage | None = None


def _get_limiter() -> MovingWindowRateLimiter:
    global _limiter, _storage
    if _limiter is None:
        _storage = _build_storage(get_settings().redis_url or "", cluster=get_settings().redis_cluster)
        _limiter = MovingWindowRateLimiter(_storage)
    return _limiter


def _build_storage(url: str, *, cluster: bool) -> RedisStorage:
    """Each moving window is one key, counted by one Lua script: cluster-safe as it is."""
    timeout = get_settings().redis_timeout_seconds
    options = {"implementation": "redispy", "socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not cluster:
        return RedisStorage("async+" + url, **options)
    parts = urlsplit(url)
    if parts.scheme == "rediss":
        options["ssl"] = True
    return RedisClusterStorage(f"async+redis+cluster://{parts.netloc}", **options)


def reset_limiter() -> None:
    global _limiter, _storage
    _limiter = _storage = None


async def _fail_open(check: Awaitable[bool]) -> bool:
    """A Redis outage must not take sign-up and password reset down with it: allow, and say so."""
    try:
        return await check
    except (RedisError, OSError) as exc:
        logger.warning("rate limiter unavailable ({}); allowing the request", type(exc).__name__)
        return True


def _opaque(key: tuple[str, ...]) -> tuple[str, ...]:
    """The limit's name, then a digest of the rest: Redis never holds an email address or IP in clear
    (nothing to erase there when an account goes)."""
    name, *rest = key
    return (name, hashlib.sha256("\x1f".join(rest).encode()).hexdigest()[:32]) if rest else (name,)


async def _retry_after(item: RateLimitItem, *key: str) -> int:
    stats = await _get_limiter().get_window_stats(item, *key)
    return max(1, int(stats.reset_time - time.time()) + 1)


def refused(name: str, retry_after: int, detail: str | None = None) -> RateLimited:
    """The 429 to raise, counted in `c3po_rate_limit_refusals_total` under `name` (never an address)."""
    RATE_LIMIT_REFUSALS.labels(name).inc()
    return RateLimited(retry_after, detail)


def _name(key: tuple[str, ...]) -> str:
    """A limit's key without its subject: `("register", "ip", <ip>)` -> `register:ip`."""
    return ":".join(key[:-1]) or key[0]


async def ensure_allowed(limit: str, *key: str) -> None:
    """Raise 429 if the window is already full, without counting this request."""
    item, opaque = parse(limit), _opaque(key)
    if not await _fail_open(_get_limiter().test(item, *opaque)):
        raise refused(_name(key), await _retry_after(item, *opaque))


async def hit(limit: str, *key: str) -> None:
    """Count one request; raise 429 when the window was already full."""
    item, opaque = parse(limit), _opaque(key)
    if not await _fail_open(_get_limiter().hit(item, *opaque)):
        raise refused(_name(key), await _retry_after(item, *opaque))


async def record(limit: str, *key: str) -> None:
    """Count one event (a failed login, say) without refusing anything now."""
    await _fail_open(_get_limiter().hit(parse(limit), *_opaque(key)))


def limits_for(name: str) -> str:
    return getattr(get_settings(), name)
