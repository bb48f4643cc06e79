"""arq's queue on one Redis with Sentinel as its high-availability answer: the API hands jobs to the
primary Sentinel names, and to the promoted replica once the primary dies; the worker's settings
reach the same primary. Real `redis-server` processes: a primary, a replica, one Sentinel."""

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from arq.connections import create_pool

from app.services.messaging import outbox, worker
from tests.e2e.test_redis_cluster import require_redis_server
from tests.smtp import HOST, free_port, settings_env

MASTER = "c3po-queue"
QUEUE = "arq:queue"


@dataclass
class Sentinels:
    primary: int
    replica: int
    sentinel: int
    processes: dict[int, subprocess.Popen]

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.sentinel}/{MASTER}"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, socket_timeout=2)

    def master(self) -> int:
        _, port = self.node(self.sentinel).sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def healthy(self) -> bool:
        state = self.node(self.sentinel).sentinel_master(MASTER)
        return state["is_master"] and not (state["is_sdown"] or state["is_odown"])

    def kill(self, port: int) -> None:
        self.processes[port].kill()
        self.processes[port].wait(10)


def _until(predicate, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@contextlib.contextmanager
def sentinel_setup(directory: Path) -> Iterator[Sentinels]:
    primary, replica, sentinel = free_port(), free_port(), free_port()
    config = directory / "sentinel.conf"
    config.write_text(
        f"port {sentinel}\nbind {HOST}\nsentinel monitor {MASTER} {HOST} {primary} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n"
    )
    plain = ("--bind", HOST, "--save", "", "--appendonly", "no", "--dir", str(directory))
    commands = {
        primary: ["redis-server", "--port", str(primary), *plain],
        replica: ["redis-server", "--port", str(replica), "--replicaof", HOST, str(primary), *plain],
        sentinel: ["redis-server", str(config), "--sentinel"],
    }
    processes: dict[int, subprocess.Popen] = {}
    try:
        for port, command in commands.items():
            log = (directory / f"redis-{port}.log").open("wb")
            processes[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        built = Sentinels(primary, replica, sentinel, processes)
        _until(lambda: built.node(replica).info("replication")["master_link_status"] == "up", "no replication")
        _until(lambda: built.master() == primary, "Sentinel did not name the primary")
        _until(
            lambda: built.node(sentinel).sentinel_master(MASTER)["num-slaves"] == 1, "Sentinel did not find the replica"
        )
        yield built
    finally:
        for process in processes.values():
            process.kill()
            process.wait(10)


@pytest.fixture
def sentinels(tmp_path) -> Iterator[Sentinels]:
    require_redis_server()
    with sentinel_setup(tmp_path) as built:
        yield built


def queued(node: redis.Redis) -> set[bytes]:
    return set(node.zrange(QUEUE, 0, -1))


async def test_jobs_reach_the_primary_sentinel_names_before_and_after_a_failover(app, sentinels):
    with settings_env(ARQ_REDIS_URL=sentinels.url):
        await outbox.close_arq_pool()
        try:
            await outbox.dispatch(1)
            assert queued(sentinels.node(sentinels.primary)) == {outbox.job_id(1).encode()}
            pool = await create_pool(worker.redis_settings())
            try:
                assert await pool.zcard(QUEUE) == 1  # the worker reads the same queue
            finally:
                await pool.aclose()

            # Replication is asynchronous: a job the replica has not received dies with the primary
            # (the outbox relay queues it again). This test is about routing, so let it arrive first.
            replica = sentinels.node(sentinels.replica)
            _until(lambda: queued(replica) == {outbox.job_id(1).encode()}, "the replica never got the first job")
            sentinels.kill(sentinels.primary)
            _until(lambda: sentinels.master() == sentinels.replica, "Sentinel did not promote the replica")
            _until(lambda: sentinels.node(sentinels.replica).info("replication")["role"] == "master", "no promotion")
            _until(lambda: sentinels.healthy(), "Sentinel did not see the new primary up")

            await outbox.dispatch(2)
            assert queued(sentinels.node(sentinels.replica)) == {outbox.job_id(1).encode(), outbox.job_id(2).encode()}
        finally:
            await outbox.close_arq_pool()


def test_a_sentinel_url_names_every_sentinel_the_master_and_the_database(monkeypatch):
    url = "redis+sentinel://:s%40cret@sentinel-1:26379,sentinel-2:26380/c3po-queue/2"
    with settings_env(ARQ_REDIS_URL=url):
        settings = outbox.queue_redis_settings()
    assert settings.sentinel and settings.sentinel_master == "c3po-queue"
    assert settings.host == [("sentinel-1", 26379), ("sentinel-2", 26380)]
    assert (settings.database, settings.password) == (2, "s@cret")
