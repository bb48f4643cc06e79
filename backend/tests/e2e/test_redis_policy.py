"""Start-up warns when Redis may evict keys: checked on a Redis of the test's own."""

from loguru import logger

from app.redis import warn_unless_noeviction
from tests.e2e.conftest import RedisServer


async def test_an_evicting_redis_is_warned_about_and_noeviction_is_not():
    server = RedisServer().start()
    logged: list[str] = []
    sink = logger.add(lambda line: logged.append(str(line)), level="WARNING", format="{message}")
    client = server.client()
    try:
        await client.config_set("maxmemory-policy", "allkeys-lru")
        assert await warn_unless_noeviction(client, "queue") == "allkeys-lru"
        assert any("queue Redis has maxmemory-policy allkeys-lru" in line for line in logged)

        logged.clear()
        await client.config_set("maxmemory-policy", "noeviction")
        assert await warn_unless_noeviction(client, "queue") == "noeviction"
        assert logged == []

        server.stop()  # unreachable: no answer, no warning, no failure
        assert await warn_unless_noeviction(client, "queue") is None
        assert logged == []
    finally:
        logger.remove(sink)
        await client.aclose()
        server.stop()
