"""No double booking, whatever the concurrency: two uvicorn API processes on the test database, real
HTTP, 200 simultaneous requests for overlapping times of one staff member -> exactly one wins, every
other request is a 409 `slot_unavailable`. The same for reschedules into one slot, and for recurring
series that share an occurrence.

The API processes step slots every 15 minutes (`SLOT_STEP_MINUTES`), so the requests ask for
several different start times, all overlapping one another.
"""

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from datetime import time as wall
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.models import Appointment, Role, User
from app.services.accounts import tokens
from app.utils.security import create_access_token
from tests.apiserver import STARTUP_SECONDS
from tests.factories import hashed, unique_email
from tests.scheduling import URL, add_appointment, create_service, create_staff, days_ahead
from tests.smtp import free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]
REQUESTS = 200
SERIES_PAIRS = 10


@pytest.fixture(scope="module")
def api_servers(service_urls, tmp_path_factory) -> Iterator[list[str]]:
    """Two independent API processes (their own pools, their own event loops) on the test database."""
    with two_api_processes(service_urls, tmp_path_factory.mktemp("api")) as servers:
        yield servers


@contextmanager
def two_api_processes(service_urls, logs: Path, **settings: str) -> Iterator[list[str]]:
    """`api_servers` with these extra settings (environment variables); yield their base URLs."""
    env = {
        **os.environ,
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": service_urls["redis_url"],
        "SLOT_STEP_MINUTES": "15",
        "MAX_IN_FLIGHT_REQUESTS": str(REQUESTS),  # all 200 reach the database: this is about double booking
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    servers: list[tuple[subprocess.Popen, str, Path]] = []
    for n in range(2):
        port, log = free_port(), logs / f"api-{n}.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
            process = subprocess.Popen(
                [*command, "--log-level", "warning", "--no-access-log"],
                cwd=BACKEND_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        servers.append((process, f"http://127.0.0.1:{port}", log))
    try:
        for process, base, log in servers:
            _wait_healthy(process, base, log)
        yield [base for _, base, _ in servers]
    finally:
        for process, _, log in servers:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            errors = [line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line]
            assert not errors, "\n".join(errors)


def _wait_healthy(process: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the API exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the API did not come up:\n{log.read_text()}")


async def clients(session, count: int) -> list[tuple[User, dict[str, str]]]:
    """`count` verified users and a Bearer header each, in one commit."""
    password = await hashed("concurrency test password")
    users = [
        User(
            email=unique_email(),
            hashed_password=password,
            full_name=f"Client {n}",
            role=Role.user.value,
            email_verified_at=datetime.now(UTC),
        )
        for n in range(count)
    ]
    session.add_all(users)
    await session.commit()
    headers = []
    for user in users:
        family, _ = await tokens.start_family(user.id)
        token, _ = create_access_token(user.id, user.role, session_id=family)
        headers.append({"Authorization": f"Bearer {token}"})
    return list(zip(users, headers, strict=True))


def at(day, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, wall(hour, minute), tzinfo=UTC)


async def fire(servers: list[str], requests: list[tuple[str, str, dict, dict]]) -> list[httpx.Response]:
    """Every request at once, alternating between the two API processes."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        start = asyncio.Event()

        async def one(n: int, method: str, path: str, body: dict, headers: dict) -> httpx.Response:
            await start.wait()
            return await http.request(method, servers[n % 2] + path, json=body, headers=headers)

        tasks = [asyncio.create_task(one(n, *request)) for n, request in enumerate(requests)]
        await asyncio.sleep(0.1)
        start.set()
        return await asyncio.gather(*tasks)


def outcome(responses: list[httpx.Response]) -> Counter:
    return Counter((r.status_code, r.json().get("code")) for r in responses)


async def live_count(session, staff: User) -> int:
    query = select(func.count()).where(
        Appointment.staff_id == staff.id, Appointment.status.in_(["pending", "confirmed"])
    )
    return await session.scalar(query)


class TestNoDoubleBooking:
    async def test_simultaneous_bookings_of_overlapping_times(self, api_servers, session):
        staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
        service = await create_service(session, [staff], duration=60)
        day = days_ahead(3)
        starts = [at(day, 10, minute) for minute in (0, 15, 30, 45)]  # any two overlap
        requests = [
            (
                "POST",
                URL,
                {"service_id": str(service.id), "staff_id": str(staff.id), "starts_at": starts[n % 4].isoformat()},
                headers,
            )
            for n, (_, headers) in enumerate(await clients(session, REQUESTS))
        ]

        responses = await fire(api_servers, requests)

        assert outcome(responses) == {(201, None): 1, (409, "slot_unavailable"): REQUESTS - 1}
        assert await live_count(session, staff) == 1

    async def test_simultaneous_reschedules_into_one_slot(self, api_servers, session):
        staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
        service = await create_service(session, [staff], duration=60)
        target = at(days_ahead(2), 14)
        first_hour = at(days_ahead(4), 0)
        requests = []
        for n, (user, headers) in enumerate(await clients(session, REQUESTS)):
            start = first_hour + timedelta(hours=n)
            appointment = await add_appointment(session, user, staff, service, start, commit=False)
            await session.flush()
            requests.append(("PATCH", f"{URL}/{appointment.id}", {"starts_at": target.isoformat()}, headers))
        await session.commit()

        responses = await fire(api_servers, requests)

        assert outcome(responses) == {(200, None): 1, (409, "slot_unavailable"): REQUESTS - 1}
        at_target = select(func.count()).where(Appointment.staff_id == staff.id, Appointment.starts_at == target)
        assert await session.scalar(at_target) == 1
        assert await live_count(session, staff) == REQUESTS

    async def test_recurring_series_that_share_an_occurrence(self, api_servers, session):
        """Pairs of series, each pair on its own staff member: weekly from day D and daily from D+5
        share exactly D+7; of each pair exactly one is booked, and the other books nothing."""
        day = days_ahead(3)
        shared = at(day + timedelta(days=7), 9)
        requests, staff_members = [], []
        people = await clients(session, 2 * SERIES_PAIRS)
        for pair in range(SERIES_PAIRS):
            staff = await create_staff(session, timezone="UTC", hours=(("08:00", "18:00"),))
            service = await create_service(session, [staff], duration=60)
            staff_members.append(staff)
            common = {"service_id": str(service.id), "staff_id": str(staff.id)}
            weekly = {**common, "starts_at": at(day, 9).isoformat(), "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=5"}}
            daily = {
                **common,
                "starts_at": at(day + timedelta(days=5), 9).isoformat(),
                "recurrence": {"rrule": "FREQ=DAILY;COUNT=5"},
            }
            requests.append(("POST", URL, weekly, people[2 * pair][1]))
            requests.append(("POST", URL, daily, people[2 * pair + 1][1]))

        responses = await fire(api_servers, requests)

        for pair, staff in enumerate(staff_members):
            weekly, daily = responses[2 * pair], responses[2 * pair + 1]
            assert sorted([weekly.status_code, daily.status_code]) == [201, 409], (weekly.text, daily.text)
            loser = weekly if weekly.status_code == 409 else daily
            assert loser.json()["code"] == "slot_unavailable"
            assert loser.json()["conflicts"] == [shared.isoformat().replace("+00:00", "Z")]
            assert await live_count(session, staff) == 5
