"""Booking throughput against one uvicorn process, beside raw PostgreSQL inserts from the same run.

    uv run python bench/booking.py [--bookings 3000] [--concurrency 32] [--staff 64]

Seeds `--staff` staff members (UTC, every day 08:00-20:00), one 30-minute service offered by all,
and `--concurrency` verified clients. Then, at `--concurrency` in flight:
- baseline: raw asyncpg single-row INSERTs (autocommit) into a table with the same kind of exclusion
  constraint as `appointments` (`EXCLUDE USING gist (staff_id WITH =, tstzrange WITH &&)`);
- `POST /api/v1/appointments` (with an `Idempotency-Key`), each client booking distinct free slots
  (spread over every staff member and 60 days, so they never clash).
Prints bookings/s and p50/p95/p99 round trip for both, and the API process's CPU time per booking
(what one process would do with a core of its own: the figure least moved by a busy machine). The
HTTP client is a minimal keep-alive HTTP/1.1 client on asyncio streams, so its own CPU cost (it
shares the cores) stays small.
`--pin` runs the API on CPU 1 and this client on CPU 0; `--profile FILE` records the API with py-spy.
Uses BENCH_DATABASE_URL/BENCH_REDIS_URL (or TEST_*), else embedded servers; always a throwaway database.
"""

import argparse
import asyncio
import functools
import json
import os
import random
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from datetime import time as wall
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
from _harness import PIDS, api_server, bench_database, cpu_seconds, service_row, user_row

PASSWORD = "a bench password that nobody uses"
OPENS, CLOSES = wall(8), wall(20)
BASELINE_TABLE = """
CREATE TABLE bench_slots (
    id bigserial PRIMARY KEY,
    staff_id uuid NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    EXCLUDE USING gist (staff_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)
)"""


def stats(latencies: list[float]) -> str:
    ordered = sorted(latencies)

    def pick(q: float) -> float:
        return ordered[max(0, int(len(ordered) * q) - 1)] * 1000

    return f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p95 {pick(0.95):6.1f} ms  p99 {pick(0.99):6.1f} ms"


async def seed(database_url: str, redis_url: str, staff_count: int, clients: int) -> tuple[uuid.UUID, list, list]:
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    from sqlalchemy import insert

    from app.database import dispose_engine, unit_of_work
    from app.models import Service, StaffProfile, User, WeeklyInterval, service_staff
    from app.utils.security import hash_password

    hashed = await hash_password(PASSWORD)
    now = datetime.now(UTC)

    user = functools.partial(user_row, hashed_password=hashed, verified_at=now)

    staff = [user("staff", f"staff{n}@bench.example") for n in range(staff_count)]
    bookers = [user("user", f"booker{n}@bench.example") for n in range(clients)]
    service_id = uuid.uuid4()
    async with unit_of_work() as session:
        await session.execute(insert(User), staff + bookers)
        await session.execute(insert(StaffProfile), [{"user_id": s["id"], "timezone": "UTC", "bio": ""} for s in staff])
        await session.execute(
            insert(WeeklyInterval),
            [
                {"staff_id": s["id"], "weekday": d, "start_time": OPENS, "end_time": CLOSES}
                for s in staff
                for d in range(7)
            ],
        )
        await session.execute(insert(Service), [service_row(service_id)])
        await session.execute(insert(service_staff), [{"service_id": service_id, "staff_id": s["id"]} for s in staff])
    await dispose_engine()
    return service_id, [s["id"] for s in staff], [b["email"] for b in bookers]


def free_slots(staff_ids: list[uuid.UUID], count: int) -> list[tuple[uuid.UUID, datetime]]:
    """`count` distinct half-hour slots from tomorrow on, spread over every staff member."""
    first = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=2)
    per_day = (CLOSES.hour - OPENS.hour) * 2
    slots = []
    day = 0
    while len(slots) < count:
        for position in range(per_day):
            at = first + timedelta(days=day, hours=OPENS.hour, minutes=30 * position)
            slots.extend((staff_id, at) for staff_id in staff_ids)
        day += 1
    random.Random(7).shuffle(slots)
    return slots[:count]


async def drive(concurrency: int, jobs: list, call) -> tuple[float, list[float]]:
    """Run `call(worker, job)` over every job, `concurrency` at once; (elapsed seconds, latencies)."""
    queue = iter(jobs)
    latencies: list[float] = []

    async def worker(n: int) -> None:
        for job in queue:
            began = time.perf_counter()
            await call(n, job)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return time.perf_counter() - began, latencies


async def baseline(database_url: str, staff_ids: list[uuid.UUID], rows: int, concurrency: int) -> None:
    url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    setup = await asyncpg.connect(url)
    await setup.execute(BASELINE_TABLE)
    pool = await asyncpg.create_pool(url, min_size=concurrency, max_size=concurrency)
    insert = "INSERT INTO bench_slots (staff_id, starts_at, ends_at) VALUES ($1, $2, $3)"
    connections = [await pool.acquire() for _ in range(concurrency)]

    async def call(n: int, slot: tuple[uuid.UUID, datetime]) -> None:
        await connections[n].execute(insert, slot[0], slot[1], slot[1] + timedelta(minutes=30))

    elapsed, latencies = await drive(concurrency, free_slots(staff_ids, rows), call)
    print(
        f"{'baseline: raw asyncpg INSERT, exclusion constraint':<54} {len(latencies):>5} rows  "
        f"{len(latencies) / elapsed:7.1f} rows/s      {stats(latencies)}"
    )
    for connection in connections:
        await pool.release(connection)
    await pool.close()
    await setup.execute("DROP TABLE bench_slots")
    await setup.close()


class Connection:
    """One keep-alive HTTP/1.1 connection: just enough client for JSON requests and answers."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def booking(
    base: str, service_id: uuid.UUID, staff_ids: list, emails: list[str], bookings: int, profile: str | None
) -> None:
    tokens = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for email in emails:
            response = await http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
            assert response.status_code == 200, response.text
            tokens.append(response.json()["access_token"])
    connections = [Connection(base) for _ in tokens]
    statuses: Counter[int] = Counter()
    # Tomorrow's slots are left to the baseline's table; these start a year's quarter later.
    slots = [(s, at + timedelta(days=90)) for s, at in free_slots(staff_ids, bookings)]

    async def call(n: int, slot: tuple[uuid.UUID, datetime]) -> None:
        body = json.dumps(
            {"service_id": str(service_id), "staff_id": str(slot[0]), "starts_at": slot[1].isoformat()}
        ).encode()
        headers = {
            "Authorization": f"Bearer {tokens[n]}",
            "Content-Type": "application/json",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        status, answer = await connections[n].request("POST", "/api/v1/appointments", headers, body)
        statuses[status] += 1
        if status != 201 and statuses[status] <= 3:
            print("unexpected answer", status, answer[:300])

    warmup = len(tokens)
    await drive(len(tokens), slots[:warmup], call)  # first connections, first compiled statements
    statuses.clear()
    spy = None
    if profile:  # collapsed stacks of the API process during the timed run (py-spy, a dev dependency)
        command = ["py-spy", "record", "--pid", str(PIDS[base]), "--format", "raw", "-o", profile, "--nonblocking"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
    cpu = cpu_seconds(PIDS[base])
    elapsed, latencies = await drive(len(tokens), slots[warmup:], call)
    cpu = cpu_seconds(PIDS[base]) - cpu
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    for connection in connections:
        connection.close()
    summary = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    print(
        f"{'POST /api/v1/appointments, one uvicorn process':<54} {len(latencies):>5} books "
        f"{len(latencies) / elapsed:7.1f} bookings/s  {stats(latencies)}  ({summary})"
    )
    print(
        f"{'':<54} API process CPU {cpu * 1000 / len(latencies):.2f} ms per booking "
        f"(at most {len(latencies) / cpu:.0f} bookings/s on one free core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (and baseline connections)")
    parser.add_argument("--staff", type=int, default=64)
    parser.add_argument("--pin", action="store_true", help="API on CPU 1, this client on CPU 0")
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the API during the timed run here")
    args = parser.parse_args()
    with bench_database() as (database_url, redis_url):
        service_id, staff_ids, emails = asyncio.run(seed(database_url, redis_url, args.staff, args.concurrency))
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ENVIRONMENT": "test",
            "LOGIN_ATTEMPTS_PER_IP": "1000000/minute",
            "DB_POOL_SIZE": str(args.concurrency),
        }
        if args.pin:
            os.sched_setaffinity(0, {0})
        log_path = Path(tempfile.mkdtemp(prefix="c3po-bench-")) / "api.log"
        with api_server(env, log_path=log_path, cpus={1} if args.pin else None) as base:
            print(f"{args.concurrency} concurrent clients, {args.staff} staff; the same run's baseline first:")
            asyncio.run(baseline(database_url, staff_ids, args.bookings, args.concurrency))
            asyncio.run(booking(base, service_id, staff_ids, emails, args.bookings, args.profile))


if __name__ == "__main__":
    main()
