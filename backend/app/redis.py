"""The shared async Redis clients (one pool each per process).

`get_redis()` serves sessions, rate limits and caches: a plain client, or with `REDIS_CLUSTER` a
cluster client seeded by `REDIS_URL`. Every multi-key step keeps its keys in one hash slot (a Lua
script or a pipeline of one slot); pipelines that only batch independent keys (availability
versions of several staff members) are split by node, and nothing relies on their atomicity.

`get_pubsub_redis()` publishes events: redis-py 5's cluster client has no pub/sub, and a cluster
forwards a PUBLISH to every node anyway, so events use a plain connection to one node
(`REDIS_PUBSUB_URL`, by default `REDIS_URL`).
"""

from typing import Any

from loguru import logger
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError
from redis.utils import HIREDIS_AVAILABLE

from app.config import get_settings

if HIREDIS_AVAILABLE:
    import hiredis


def _options() -> dict[str, Any]:
    timeout = get_settings().redis_timeout_seconds
    return {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }


_client: Redis | RedisCluster | None = None
_pubsub_client: Redis | None = None


def get_redis() -> Redis | RedisCluster:
    global _client
    if _client is None:
        url = get_settings().redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set (use `python -m app dev` for embedded servers)")
        _client = RedisCluster.from_url(url, **_options()) if get_settings().redis_cluster else _plain(url)
    return _client


class _PackedInC:
    """redis-py's asyncio connections pack commands in Python, about a microsecond an argument (a
    month of cached availability is thousands); hiredis, already there for parsing, packs them in C.
    What hiredis refuses (a bool, a memoryview) goes redis-py's way, to its usual answer."""

    __slots__ = ()

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])  # "CONFIG GET" is two words, as redis-py sends it
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc]


def _plain(url: str) -> Redis:
    """A plain client whose connections (TCP, TLS or a Unix socket, as the URL says) pack in C."""
    client = Redis.from_url(url, **_options())
    pool = client.connection_pool
    if HIREDIS_AVAILABLE:
        pool.connection_class = type(pool.connection_class.__name__, (_PackedInC, pool.connection_class), {})
    return client


def get_pubsub_redis() -> Redis:
    """A plain client on the node that carries events (the app's own client when that is a plain one too)."""
    global _pubsub_client
    client = get_redis()
    settings = get_settings()
    if isinstance(client, Redis) and settings.pubsub_redis_url == settings.redis_url:
        return client
    if _pubsub_client is None:
        url = settings.pubsub_redis_url
        assert url is not None
        _pubsub_client = _plain(url)
    return _pubsub_client


async def close_redis() -> None:
    global _client, _pubsub_client
    for client in (_client, _pubsub_client):
        if client is not None:
            await client.aclose()
    _client = _pubsub_client = None


async def warn_unless_noeviction(client: Redis | RedisCluster, role: str) -> str | None:
    """Log a warning at start-up when Redis may evict keys (sessions, queued jobs, sent-notes would
    vanish under memory pressure); the policy read, or None when Redis will not say (a managed
    Redis may refuse CONFIG) or cannot be reached now. Never fails the start."""
    try:
        answer = await client.config_get("maxmemory-policy")
    except (RedisError, OSError) as exc:
        logger.debug("could not read the {} Redis's maxmemory-policy: {}", role, exc)
        return None
    policy = answer.get("maxmemory-policy") if isinstance(answer, dict) else None
    if isinstance(policy, bytes):
        policy = policy.decode()
    if policy and policy != "noeviction":
        logger.warning(
            "the {} Redis has maxmemory-policy {}: under memory pressure it drops keys (sessions, queued"
            " jobs); set it to noeviction (backend/README.md, 'Redis: persistence and noeviction')",
            role,
            policy,
        )
    return policy
