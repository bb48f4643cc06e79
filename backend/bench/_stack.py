"""A whole deployment of our own for the load and fault drills: PostgreSQL (initdb/pg_ctl), Redis,
an SMTP capture server, N API processes and N workers, all on free ports and stopped afterwards.
The shared servers are never touched, so the drills may stop and start every one of them.
"""

import asyncio
import contextlib
import functools
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as wall
from pathlib import Path

import httpx

BACKEND_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BACKEND_DIR))

from tests.e2e.conftest import WORKER, WORKER_ENV, RedisServer  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402
from tests.smtp import SmtpServer, free_port  # noqa: E402

sys.path.insert(0, str(BACKEND_DIR / "bench"))
from _harness import BENCH_SECRET_KEY, service_row, user_row  # noqa: E402

PASSWORD = "a drill password that nobody uses"
OPENS, CLOSES = wall(6), wall(22)
UNLIMITED = "1000000/minute"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path
    base_url: str = ""

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)

    def errors(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if " ERROR " in line]


@dataclass
class World:
    service_id: str
    staff: list[dict]  # {"id", "email"}
    clients: list[str]  # emails


@dataclass
class Stack:
    pg: PostgresServer
    redis: RedisServer
    smtp: SmtpServer
    database_url: str
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    apis: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
        return Process(name, popen, log)

    def start_api(self, **settings: str) -> Process:
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
        command += ["--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "30"]
        process = self._spawn(f"api-{len(self.apis)}", command, {**self.env, **settings})
        process.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(process.base_url + "/health", timeout=1).status_code == 200:
                    break
            if not process.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} did not start:\n{process.log.read_text(errors='replace')}")
            time.sleep(0.1)
        self.apis.append(process)
        return process

    def start_worker(self) -> Process:
        name = f"worker-{len(self.workers)}"
        while any(worker.name == name for worker in self.workers):  # a replacement for a killed one
            name += "b"
        process = self._spawn(name, list(WORKER), {**self.env, **WORKER_ENV})
        self.workers.append(process)
        return process

    def process_errors(self) -> dict[str, list[str]]:
        return {p.name: errors for p in self.apis + self.workers if (errors := p.errors())}


@contextlib.contextmanager
def deployment(**settings: str) -> Iterator[Stack]:
    logs = Path(tempfile.mkdtemp(prefix="c3po-drill-"))
    pg = PostgresServer().init().start()
    redis = RedisServer().start()
    smtp = SmtpServer().start()
    try:
        with ThreadPoolExecutor(1) as thread:  # a loop of its own: the caller may be running one
            database_url = thread.submit(asyncio.run, pg.create_database("c3po")).result()
        subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={database_url}", "upgrade", "head"],
            cwd=BACKEND_DIR,
            check=True,
            capture_output=True,
        )
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "ENVIRONMENT": "test",
            "SECRET_KEY": BENCH_SECRET_KEY,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis.url,
            "MAIL_SERVER": smtp.host,
            "MAIL_PORT": str(smtp.port),
            "LOG_LEVEL": "WARNING",
            "LOGIN_ATTEMPTS_PER_IP": UNLIMITED,
            "LOGIN_FAILURES_PER_EMAIL": UNLIMITED,
            "AVAILABILITY_REQUESTS_PER_IP": UNLIMITED,
            "SENSITIVE_REQUESTS_PER_IP": UNLIMITED,
            "SLOT_STEP_MINUTES": "30",
            **settings,
        }
        stack = Stack(pg, redis, smtp, database_url, logs, env)
        try:
            yield stack
        finally:
            for process in stack.apis + stack.workers:
                process.stop()
    finally:
        smtp.stop()
        redis.stop()
        pg.destroy()
        print(f"(process logs in {logs})")


async def seed(stack: Stack, *, staff: int, clients: int) -> World:
    """Staff working 06:00-22:00 UTC every day, one 30-minute service they all offer, clients."""
    os.environ.update(DATABASE_URL=stack.database_url, REDIS_URL=stack.redis.url)
    from app.config import get_settings

    get_settings.cache_clear()
    from sqlalchemy import insert

    from app.database import dispose_engine, unit_of_work
    from app.models import Service, StaffProfile, User, WeeklyInterval, service_staff
    from app.utils.security import hash_password

    hashed, now = await hash_password(PASSWORD), datetime.now(UTC)

    user = functools.partial(user_row, hashed_password=hashed, verified_at=now)

    staff_rows = [user("staff", f"staff{n}@drill.example") for n in range(staff)]
    client_rows = [user("user", f"client{n}@drill.example") for n in range(clients)]
    service_id = uuid.uuid4()
    async with unit_of_work() as session:
        await session.execute(insert(User), staff_rows + client_rows)
        await session.execute(
            insert(StaffProfile), [{"user_id": s["id"], "timezone": "UTC", "bio": ""} for s in staff_rows]
        )
        await session.execute(
            insert(WeeklyInterval),
            [
                {"staff_id": s["id"], "weekday": d, "start_time": OPENS, "end_time": CLOSES}
                for s in staff_rows
                for d in range(7)
            ],
        )
        await session.execute(insert(Service), [service_row(service_id, "Drill")])
        await session.execute(
            insert(service_staff), [{"service_id": service_id, "staff_id": s["id"]} for s in staff_rows]
        )
    await dispose_engine()
    return World(
        str(service_id),
        [{"id": str(s["id"]), "email": s["email"]} for s in staff_rows],
        [c["email"] for c in client_rows],
    )


def random_slot(rng: random.Random) -> datetime:
    """A half-hour start 2-300 days ahead (past every cancellation cut-off), within working hours."""
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=rng.randint(2, 300))
    halves = (CLOSES.hour - OPENS.hour) * 2
    return day + timedelta(hours=OPENS.hour, minutes=30 * rng.randrange(halves))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
