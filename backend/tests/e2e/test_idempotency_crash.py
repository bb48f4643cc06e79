"""Idempotency survives the API's death and Redis's: real uvicorn processes on the test database.

- The API is SIGKILLed right after a booking's commit, before its answer leaves; a new process
  gets the retry (same `Idempotency-Key`, same body) and answers the first answer: 201, same id.
- Redis loses everything between a booking and its retry (restarted empty); the retry still replays.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.models import Appointment, IdempotencyKey
from tests.apiserver import STARTUP_SECONDS
from tests.e2e.conftest import RedisServer
from tests.e2e.crash_app import CRASH_HEADER
from tests.factories import create_user
from tests.scheduling import URL, booking_body, create_service, create_staff, days_ahead, headers_for
from tests.smtp import free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    process: subprocess.Popen
    base: str
    log: Path

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the API exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the API did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def start_api(service_urls, tmp_path):
    started: list[Api] = []

    def start(redis_url: str) -> Api:
        env = {
            **os.environ,
            "DATABASE_URL": service_urls["database_url"],
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "WARNING",
        }
        port, log = free_port(), tmp_path / f"api-{len(started)}.log"
        command = [sys.executable, "-m", "uvicorn", "tests.e2e.crash_app:create_app", "--factory"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*command, "--port", str(port), "--log-level", "warning", "--no-access-log"],
                cwd=BACKEND_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        api = Api(process, f"http://127.0.0.1:{port}", log)
        started.append(api)
        api.wait_healthy()
        return api

    yield start
    for api in started:
        api.stop()
        print(f"--- {api.log.name} (exit {api.process.returncode})\n{api.log.read_text(errors='replace')}")


@pytest.fixture
async def booking(session):
    staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
    service = await create_service(session, [staff], duration=60)
    customer = await create_user(session)
    starts_at = datetime.combine(days_ahead(3), datetime.min.time(), tzinfo=UTC) + timedelta(hours=10)
    return booking_body(service, staff, starts_at), customer


async def appointments(session) -> list[Appointment]:
    """Every appointment, read in a transaction of its own, ended at once: the test then waits for
    API processes to start, longer than the database lets a transaction sit idle on a slow machine."""
    session.expire_all()
    found = list(await session.scalars(select(Appointment)))
    session.expunge_all()  # detached, they keep what was read
    await session.rollback()
    return found


class TestCrashAfterCommit:
    async def test_a_retry_after_sigkill_gets_the_first_answer(self, start_api, service_urls, session, booking):
        body, customer = booking
        headers = {**await headers_for(customer), "Idempotency-Key": "crash-1"}
        first = start_api(service_urls["redis_url"])

        with pytest.raises(httpx.TransportError):  # the answer never leaves
            httpx.post(first.base + URL, json=body, headers={**headers, CRASH_HEADER: "after-commit"}, timeout=30)
        assert first.process.wait(10) == -signal.SIGKILL
        (booked,) = await appointments(session)  # the commit happened

        second = start_api(service_urls["redis_url"])
        started = time.monotonic()
        retry = httpx.post(second.base + URL, json=body, headers=headers, timeout=30)
        print(f"retry answered in {time.monotonic() - started:.3f}s")

        assert retry.status_code == 201, retry.text
        assert retry.json()["id"] == str(booked.id) and retry.headers["idempotent-replayed"] == "true"
        assert len(await appointments(session)) == 1


class TestRedisLoss:
    async def test_a_retry_after_redis_lost_its_data_still_replays(self, start_api, session, booking):
        body, customer = booking
        headers = {**await headers_for(customer), "Idempotency-Key": "redis-1"}
        redis_server = RedisServer().start()
        try:
            api = start_api(redis_server.url)
            first = httpx.post(api.base + URL, json=body, headers=headers, timeout=30)
            assert first.status_code == 201, first.text

            redis_server.stop()  # gone, data and all
            redis_server.start()  # back on the same port, empty
            retry = httpx.post(api.base + URL, json=body, headers=headers, timeout=30)
        finally:
            redis_server.stop()

        assert retry.status_code == 201, retry.text
        assert retry.json() == first.json() and retry.headers["idempotent-replayed"] == "true"
        assert len(await appointments(session)) == 1
        assert await session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


class TestDuplicatesAcrossProcesses:
    async def test_simultaneous_duplicates_on_two_processes_book_once(self, start_api, service_urls, session, booking):
        body, customer = booking
        headers = {**await headers_for(customer), "Idempotency-Key": "burst-1"}
        apis = [start_api(service_urls["redis_url"]) for _ in range(2)]
        limits = httpx.Limits(max_connections=40, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            go = asyncio.Event()

            async def one(n: int) -> httpx.Response:
                await go.wait()
                return await http.post(apis[n % 2].base + URL, json=body, headers=headers)

            tasks = [asyncio.create_task(one(n)) for n in range(40)]
            await asyncio.sleep(0.1)
            go.set()
            responses = await asyncio.gather(*tasks)

        assert [r.status_code for r in responses] == [201] * 40, {r.status_code for r in responses}
        assert len({r.json()["id"] for r in responses}) == 1
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 39
        assert len(await appointments(session)) == 1
