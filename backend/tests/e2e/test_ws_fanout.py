"""Two API processes (uvicorn, real HTTP): an event produced by a request one of them handles reaches a
WebSocket held by the other, through Redis pub/sub."""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.models import AppointmentStatus, User
from tests.apiserver import STARTUP_SECONDS
from tests.factories import create_user, start_session
from tests.integration.test_reminders import book

BACKEND_DIR = Path(__file__).resolve().parents[2]
TIMEOUT = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def api_processes(count: int, env: dict[str, str], log_dir: Path) -> Iterator[list[str]]:
    """`count` uvicorn processes of the app, each on a port of its own; their base URLs once all are up."""
    processes, bases = [], []
    try:
        for n in range(count):
            port = _free_port()
            log = (log_dir / f"api-{n}.log").open("wb")
            command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
            processes.append(subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT))
            bases.append(f"127.0.0.1:{port}")
        deadline = time.monotonic() + STARTUP_SECONDS
        for process, base in zip(processes, bases, strict=True):
            while True:
                assert process.poll() is None, f"the API on {base} exited"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://{base}/health", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"the API on {base} did not come up"
                time.sleep(0.2)
        yield bases
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        for n in range(len(processes)):
            print(f"--- api-{n}.log\n{(log_dir / f'api-{n}.log').read_text(errors='replace')}")


@pytest.fixture
def two_apis(service_urls, tmp_path) -> Iterator[list[str]]:
    env = {
        **os.environ,
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": service_urls["redis_url"],
        "LOG_LEVEL": "WARNING",
    }
    with api_processes(2, env, tmp_path) as bases:
        yield bases


async def listen(base: str, user: User) -> ClientConnection:
    socket_ = await connect(f"ws://{base}/api/v1/ws")
    await socket_.send(json.dumps({"token": (await start_session(user)).access_token}))
    ready = json.loads(await asyncio.wait_for(socket_.recv(), TIMEOUT))
    assert ready == {"type": "ready", "data": {"user_id": str(user.id), "expires_at": ready["data"]["expires_at"]}}
    return socket_


async def next_event(socket_: ClientConnection) -> dict:
    while True:
        message = json.loads(await asyncio.wait_for(socket_.recv(), TIMEOUT))
        if message["type"] != "heartbeat":
            return message


async def test_an_event_produced_by_one_process_reaches_a_socket_held_by_the_other(two_apis, session):
    a, b = two_apis
    client = await create_user(session)
    now = datetime.now(UTC)
    appointment = await book(
        session,
        starts_at=now + timedelta(days=2),
        booked_at=now,
        client=client,
        status=AppointmentStatus.pending,
    )
    staff = await session.get(User, appointment.staff_id)
    assert staff is not None
    on_a, on_b = await listen(a, client), await listen(b, client)
    staff_headers = {"Authorization": f"Bearer {(await start_session(staff)).access_token}"}

    async with httpx.AsyncClient(headers=staff_headers, timeout=TIMEOUT) as http:
        confirmed = await http.post(f"http://{a}/api/v1/appointments/{appointment.id}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        for socket_ in (on_b, on_a):  # the other process first: that is the point
            event = await next_event(socket_)
            assert event["type"] == "appointment.updated"
            assert event["data"]["id"] == str(appointment.id)
            assert event["data"]["status"] == "confirmed"

        cancelled = await http.post(f"http://{b}/api/v1/appointments/{appointment.id}/cancel", json={})
        assert cancelled.status_code == 200, cancelled.text
        for socket_ in (on_a, on_b):
            event = await next_event(socket_)
            assert event["type"] == "appointment.cancelled"
            assert event["data"]["status"] == "cancelled"

    await on_a.close()
    await on_b.close()
