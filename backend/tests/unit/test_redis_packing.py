"""The app's Redis connections pack commands in C (hiredis) byte for byte as redis-py does in Python."""

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from app.redis import _plain

COMMANDS = [
    ("SET", "availability:1", "s|1764600000.123|1800000000,1800001800"),
    ("HSET", "availability:2", "s:abc:2026-12-15", "x", "s:abc:2026-12-16", ""),
    ("CONFIG GET", "maxmemory"),
    (b"GET", b"bytes key"),
    ("ZADD", "scores", 0.1, 3, 1e-05, 12345678901234.5, -7),
    ("SET", "unicode", "é ✓ 日本"),
    ("SET", "big", "x" * 100_000),
]


def packed(connection, *args) -> bytes:
    return b"".join(connection.pack_command(*args))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: str(command[0]))
def test_packed_like_redis_py(command):
    ours = _plain("redis://127.0.0.1:6379/0").connection_pool.make_connection()

    assert packed(ours, *command) == packed(Connection(), *command)


def test_what_hiredis_refuses_gets_redis_pys_answer():
    ours = _plain("redis://127.0.0.1:6379/0").connection_pool.make_connection()

    assert packed(ours, "SET", "view", memoryview(b"abc")) == packed(Connection(), "SET", "view", memoryview(b"abc"))
    with pytest.raises(DataError):
        ours.pack_command("SET", "flag", True)


def test_the_url_still_chooses_the_kind_of_connection():
    pool = _plain("unix:///tmp/redis.sock?db=3").connection_pool

    assert issubclass(pool.connection_class, UnixDomainSocketConnection)
