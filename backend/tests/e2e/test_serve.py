"""`python -m app serve` with two processes: both serve, and SIGTERM drains them gracefully — a request
in flight completes, WebSockets are closed with 1012, new connections are refused, and the command
exits 0 within the grace period."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.factories import create_user, start_session
from tests.smtp import HOST, free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]
GRACE_SECONDS = 8
EXIT_BOUND_SECONDS = GRACE_SECONDS + 5 + 5  # the grace period, the parent's slack, and ours
SLOW_URL = "/api/v1/services"  # kept waiting by a lock on `services` held by the test


@dataclass
class Server:
    process: subprocess.Popen
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def server(request, service_urls, tmp_path) -> Iterator[Server]:
    workers = getattr(request, "param", 2)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": service_urls["redis_url"],
        "GRACEFUL_TIMEOUT_SECONDS": str(GRACE_SECONDS),
        "DB_LOCK_TIMEOUT_SECONDS": "60",  # the slow request waits on the test's lock, not on a timeout
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "app", "serve", "--workers", str(workers), "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    running = Server(process, f"{HOST}:{port}", log_path)
    try:
        deadline = time.monotonic() + 180  # two processes importing the app on a busy machine
        while True:
            assert process.poll() is None, running.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{running.base}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"serve did not come up:\n{running.log()}"
            time.sleep(0.2)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        print(f"--- serve.log (exit {process.returncode})\n{running.log()}")


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def api_processes(db: asyncpg.Connection) -> set[int]:
    """The API processes holding pooled connections to the test database (`c3po-api/<pid>`)."""
    names = await db.fetch(
        "SELECT DISTINCT application_name FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'c3po-api/%'"
    )
    pids = {int(row["application_name"].rsplit("/", 1)[1]) for row in names}
    return pids - {os.getpid()}  # the test's own pool (the in-process app) is named c3po-api too


async def wait_for_lock_waiter(db: asyncpg.Connection, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'c3po-api/%' AND wait_event_type = 'Lock'"
    ):
        assert time.monotonic() < deadline, "the slow request never reached the database"
        await asyncio.sleep(0.05)


async def test_both_processes_serve_and_sigterm_drains_them(server, service_urls, session):
    db = await asyncpg.connect(service_urls["database_url"])
    try:
        # Both children answer: fresh connections, side by side, until each has used the database.
        async with httpx.AsyncClient(base_url=f"http://{server.base}", headers={"Connection": "close"}) as http:
            deadline = time.monotonic() + 60
            while len(serving := await api_processes(db)) < 2:
                assert time.monotonic() < deadline, f"only {serving} served"
                answers = await asyncio.gather(*(http.get(SLOW_URL) for _ in range(16)))
                assert {answer.status_code for answer in answers} == {200}
        assert {parent_pid(pid) for pid in serving} == {server.process.pid}

        user = await create_user(session)
        socket_ = await connect(f"ws://{server.base}/api/v1/ws")
        await socket_.send(json.dumps({"token": (await start_session(user)).access_token}))
        assert json.loads(await asyncio.wait_for(socket_.recv(), 10))["type"] == "ready"

        lock = db.transaction()
        await lock.start()
        await db.execute("LOCK TABLE services IN ACCESS EXCLUSIVE MODE")
        slow_client = httpx.AsyncClient(base_url=f"http://{server.base}", timeout=EXIT_BOUND_SECONDS)
        slow = asyncio.create_task(slow_client.get(SLOW_URL))
        await wait_for_lock_waiter(db)

        server.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        with pytest.raises(ConnectionClosed) as closed:
            while True:  # heartbeats may come first
                await asyncio.wait_for(socket_.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
        await asyncio.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new connections meanwhile
            httpx.get(f"http://{server.base}/health", timeout=2)
        assert not slow.done()

        await lock.rollback()  # the request in flight may now finish
        response = await slow
        await slow_client.aclose()
        assert response.status_code == 200, response.text

        exit_code = await asyncio.to_thread(server.process.wait, EXIT_BOUND_SECONDS)
        assert exit_code == 0, server.log()
        assert time.monotonic() - stopped_at < EXIT_BOUND_SECONDS
    finally:
        await db.close()


@pytest.mark.parametrize("server", [1], indirect=True)
async def test_a_single_process_drains_its_websockets_and_exits_0_too(server, session):
    user = await create_user(session)
    socket_ = await connect(f"ws://{server.base}/api/v1/ws?token={(await start_session(user)).access_token}")
    assert json.loads(await asyncio.wait_for(socket_.recv(), 10))["type"] == "ready"

    server.process.send_signal(signal.SIGTERM)

    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(socket_.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert await asyncio.to_thread(server.process.wait, EXIT_BOUND_SECONDS) == 0, server.log()
