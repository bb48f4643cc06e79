"""The shared async Redis clients (one pool each per process).

`get_redis()` serves sessions, rate limits and caches: a plain client, or with `REDIS_CLUSTER` a
cluster client seeded by `REDIS_URL`. Every multi-key step keeps its keys in one hash slot (a Lua
script or a pipeline of one slot); pipelines that only batch independent keys (availability
versions of several staff members) are split by node, and nothing relies on their atomicity.

`get_pubsub_redis()` publishes events: redis-py 5's cluster client has no pub/sub, and a cluster
forwards a PUBLISH to every node anyway, so events use a plain connection to one node
(`REDIS_PUBSUB_URL`, by default `REDIS_URL`).
"""

from redis.asyncio import Redis, RedisCluster

from app.config import get_settings

_OPTIONS = {"decode_responses": True, "socket_timeout": 2, "socket_connect_timeout": 2, "health_check_interval": 30}

_client: Redis | RedisCluster | None = None
_pubsub_client: Redis | None = None


def get_redis() -> Redis | RedisCluster:
    global _client
    if _client is None:
        url = get_settings().redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set (use `python -m app dev` for embedded servers)")
        _client = (
            RedisCluster.from_url(url, **_OPTIONS) if get_settings().redis_cluster else Redis.from_url(url, **_OPTIONS)
        )
    return _client


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
        _pubsub_client = Redis.from_url(url, **_OPTIONS)
    return _pubsub_client


async def close_redis() -> None:
    global _client, _pubsub_client
    for client in (_client, _pubsub_client):
        if client is not None:
            await client.aclose()
    _client = _pubsub_client = None
