"""Shared plumbing for benchmarks: servers, a throwaway database, a uvicorn process, latency stats."""

import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx

BACKEND_DIR = Path(__file__).resolve().parent.parent
PIDS: dict[str, int] = {}
# No key ships with the code: a benchmark signs with one of its own, new each run, shared by the
# processes it starts (they inherit the environment) and by what it signs in-process.
os.environ["SECRET_KEY"] = BENCH_SECRET_KEY = secrets.token_urlsafe(32)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[str, str]]:
    """(database_url, redis_url) of a fresh, migrated database; embedded servers when none are given."""
    sys.path.insert(0, str(BACKEND_DIR))
    db_url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("TEST_REDIS_URL")
    embedded = None
    if not db_url or not redis_url:
        from app.embedded import start_embedded

        embedded = start_embedded(
            Path(tempfile.mkdtemp(prefix="c3po-bench-")), need_db=not db_url, need_redis=not redis_url
        )
        db_url, redis_url = db_url or embedded.database_url, redis_url or embedded.redis_url
    admin_url = db_url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"c3po_bench_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    from urllib.parse import urlsplit, urlunsplit

    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    try:
        subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"], cwd=BACKEND_DIR, check=True
        )
        yield url, redis_url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if embedded is not None:
            embedded.stop()


@contextlib.contextmanager
def api_server(
    env: dict[str, str],
    workers: int = 1,
    log_path: Path | None = None,
    *,
    factory: str = "app.main:create_app",
    cpus: str | set[int] | None = None,
) -> Iterator[str]:
    """A uvicorn process on a free port; its log (stderr) goes to `log_path` when given.

    `factory` may name a bench-only module under bench/ (it is on the path); `cpus` pins the server
    to those cores ("0", "0,1" or {0}), so a client pinned to another core does not compete with it.
    `PIDS[base]` is its process id while it runs (for a profiler to attach).
    """
    port = free_port()
    log = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed in `finally`
    if isinstance(cpus, str):
        cpus = {int(cpu) for cpu in cpus.split(",")}
    pythonpath = os.pathsep.join(filter(None, [str(BACKEND_DIR / "bench"), os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            factory,
            "--factory",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=BACKEND_DIR,
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
        stderr=log,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    base = f"http://127.0.0.1:{port}"
    PIDS[base] = process.pid
    try:
        deadline = time.monotonic() + 90  # a loaded machine can take a while to import the app
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("the API did not come up")
        yield base
    finally:
        PIDS.pop(base, None)
        process.terminate()
        process.wait(10)
        if log is not None:
            log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux): a figure the machine's noise barely moves."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    name: str, call: Callable[[], Awaitable[None]], *, requests: int, concurrency: int
) -> dict[str, float]:
    """Run `requests` calls with `concurrency` in flight; print and return throughput and latency."""
    latencies: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    result = {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
    }
    print(
        f"{name:<28} {len(latencies):>6} requests  {result['rps']:8.1f} req/s  "
        f"p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms  (concurrency {concurrency})"
    )
    return result


def user_row(role: str, email: str, zone: str = "UTC", *, hashed_password: str, verified_at: datetime) -> dict:
    """A verified, active account as a row for a bulk INSERT (seeding thousands: no ORM objects)."""
    return {
        "id": uuid.uuid4(),
        "email": email,
        "hashed_password": hashed_password,
        "full_name": email.split("@")[0],
        "timezone": zone,
        "locale": "en",
        "role": role,
        "is_active": True,
        "email_verified_at": verified_at,
    }


def service_row(service_id: uuid.UUID, name: str = "Consultation") -> dict:
    """A 30-minute service, bookable from an hour ahead to a year ahead."""
    return {
        "id": service_id,
        "name": name,
        "description": "",
        "duration_minutes": 30,
        "min_notice_minutes": 60,
        "max_advance_days": 365,
    }
