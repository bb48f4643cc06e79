"""PostgreSQL stopped and started under traffic, against a real API process and a server of our own.

While it is down every request that needs it answers 503 `database_unavailable` with `Retry-After`
(it used to be a bare 500: a refused connect escapes SQLAlchemy as a plain `OSError`), `/health`
still answers, and once it is back no request fails on a pooled connection the restart killed.
The heavier version under mixed load is `bench/faults.py --drill postgres`.
"""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.apiserver import BACKEND_DIR, api_process
from tests.pgserver import PostgresServer

EMAIL, PASSWORD = "outage@example.com", "a password for the outage drill"
HANG_GUARD = 15  # seconds: every answer must come long before this


@dataclass(frozen=True)
class Answer:
    sent: float
    status: int
    code: str
    retry_after: str


@pytest.fixture
async def own_postgres(service_urls) -> AsyncIterator[tuple[PostgresServer, str]]:
    server = await asyncio.to_thread(lambda: PostgresServer().init().start())
    try:
        url = await server.create_database("c3po")
        env = {**os.environ, "DATABASE_URL": url}
        for command in (["migrate"], ["create-user", "--email", EMAIL, "--password", PASSWORD]):
            subprocess.run([sys.executable, "-m", "app", *command], cwd=BACKEND_DIR, env=env, check=True)
        yield server, url
    finally:
        await asyncio.to_thread(server.destroy)


async def traffic(http: httpx.AsyncClient, token: str, until: float, answers: list[Answer]) -> None:
    paths = ["/api/v1/users/me", "/api/v1/services"]
    n = 0
    while time.monotonic() < until:
        n += 1
        sent = time.monotonic()
        response = await http.get(paths[n % 2], headers={"Authorization": f"Bearer {token}"})
        body = response.json() if response.status_code >= 400 else {}
        retry_after = response.headers.get("retry-after", "")
        answers.append(Answer(sent, response.status_code, body.get("code", ""), retry_after))
        await asyncio.sleep(0.02)


async def test_requests_answer_503_while_postgres_is_down_and_none_fails_once_it_is_back(own_postgres, tmp_path):
    server, url = own_postgres
    with api_process(tmp_path / "api.log", DATABASE_URL=url, LOGIN_ATTEMPTS_PER_IP="1000/minute") as base:
        async with httpx.AsyncClient(base_url=base, timeout=HANG_GUARD) as http:
            login = await http.post("/api/v1/auth/login", data={"username": EMAIL, "password": PASSWORD})
            token = login.json()["access_token"]
            answers: list[Answer] = []
            until = time.monotonic() + 3600
            load = [asyncio.create_task(traffic(http, token, until, answers)) for _ in range(6)]
            await asyncio.sleep(1)

            await asyncio.to_thread(server.stop, "fast")
            await asyncio.sleep(2)
            health = await http.get("/health")
            health_db = await http.get("/health/db")
            await asyncio.to_thread(server.start)
            back = time.monotonic()
            await asyncio.sleep(3)
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)

            relogin = await http.post("/api/v1/auth/login", data={"username": EMAIL, "password": PASSWORD})

    assert (health.status_code, health_db.status_code) == (200, 503)
    unexpected = [a for a in answers if a.status not in (200, 503)]
    assert not unexpected, unexpected[:5]
    outage = [a for a in answers if a.status == 503]
    assert outage, "the outage was never seen"
    assert {a.code for a in outage} <= {"database_unavailable", "server_busy"}
    assert all(a.retry_after.isdigit() for a in outage)
    after = [a.status for a in answers if a.sent > back + 1]
    assert after and set(after) == {200}, after
    assert relogin.status_code == 200, relogin.text
