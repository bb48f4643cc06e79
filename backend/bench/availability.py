"""Availability latency and booking throughput against one uvicorn process.

    uv run python bench/availability.py [--requests 200] [--bookings 640] [--concurrency 32]

Seeds 20 staff in five time zones (Mon-Sat 08:00-13:00 and 14:00-20:00 local), each with 5,000
appointments over the year around today (16 of a day's 22 half-hours; past ones mostly completed,
future ones mostly confirmed, ~10% cancelled; live ones never overlap; inserted in booking order,
0-60 days before their start), a few days off, and one 30-minute service offered by all 20. Then:
- GET /api/v1/availability for 31 days, one staff member and the whole service: each request's
  window a minute later than the last (`shifted`: a new answer, but from the per-day cache
  entries), the same window again (`cached`), and with the cache emptied before each request
  (`cold`: everything computed from the database);
- POST /api/v1/appointments from `--concurrency` clients at once, each booking distinct free slots.
"Server" times are the API's own per-request timings (its request log); "round trip" adds HTTP;
"API CPU" is the API process's user + system time per request (from /proc), the figure a busy
machine moves least. Then a same-run baseline (the bare `GET /health` route of the same process)
and the uncached (`cold`) p95 of both cases against the targets (one staff member < 10 ms, the
20-staff service < 30 ms).
Uses BENCH_DATABASE_URL/BENCH_REDIS_URL (or TEST_*), else embedded servers; always a throwaway database.
"""

import argparse
import asyncio
import functools
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from _harness import PIDS, api_server, bench_database, cpu_seconds, service_row, user_row

STAFF, PER_STAFF = 20, 5000
ZONES = ("Europe/Berlin", "America/New_York", "Europe/London", "Asia/Tokyo", "America/Los_Angeles")
HOURS = ((wall(8), wall(13)), (wall(14), wall(20)))
PASSWORD = "a bench password that nobody uses"
LOG_LINE = re.compile(r" (\S+) app\.middleware:\d+ - (GET|POST) (\S+) (\d{3}) ([\d.]+)ms")


@dataclass(frozen=True)
class World:
    service_id: uuid.UUID
    staff_ids: list[uuid.UUID]
    client_emails: list[str]


def _positions(day: date, zone: ZoneInfo) -> list[datetime]:
    """The day's 30-minute working positions as UTC instants."""
    starts = []
    for opens, closes in HOURS:
        at = datetime.combine(day, opens)
        while at < datetime.combine(day, closes):
            starts.append(at.replace(tzinfo=zone).astimezone(UTC))
            at += timedelta(minutes=30)
    return starts


def _status(rng: random.Random, past: bool) -> str:
    roll = rng.random()
    if roll < 0.1:
        return "cancelled"
    if past:
        return "no_show" if roll < 0.13 else "completed"
    return "pending" if roll < 0.2 else "confirmed"


def _appointments(rng, staff_id, zone, service_id, clients, today):
    """PER_STAFF rows over the year around today: 16 of 22 positions a working day, live ones apart."""
    rows = []
    for offset in range(-182, 183):
        day = today + timedelta(days=offset)
        if day.weekday() == 6:
            continue
        for start in rng.sample(_positions(day, ZoneInfo(zone)), 16):
            end = start + timedelta(minutes=30)
            rows.append(
                {
                    "client_id": rng.choice(clients),
                    "staff_id": staff_id,
                    "service_id": service_id,
                    "starts_at": start,
                    "ends_at": end,
                    "blocked_from": start,
                    "blocked_until": end,
                    "status": _status(rng, offset < 0),
                }
            )
    return rng.sample(rows, PER_STAFF)


async def seed(database_url: str, redis_url: str, clients: int) -> World:
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    from sqlalchemy import insert, text

    from app.database import dispose_engine, get_engine, unit_of_work
    from app.models import Appointment, Service, StaffProfile, TimeOff, User, WeeklyInterval, service_staff
    from app.utils.security import hash_password

    rng = random.Random(42)
    today = datetime.now(UTC).date()
    hashed = await hash_password(PASSWORD)
    now = datetime.now(UTC)

    user = functools.partial(user_row, hashed_password=hashed, verified_at=now)

    staff = [user("staff", f"staff{n}@bench.example", ZONES[n % len(ZONES)]) for n in range(STAFF)]
    people = [user("user", f"client{n}@bench.example") for n in range(200)]
    bookers = [user("user", f"booker{n}@bench.example") for n in range(clients)]
    service_id = uuid.uuid4()
    started = time.perf_counter()
    async with unit_of_work() as session:
        await session.execute(insert(User), staff + people + bookers)
        await session.execute(
            insert(StaffProfile), [{"user_id": s["id"], "timezone": s["timezone"], "bio": ""} for s in staff]
        )
        await session.execute(
            insert(WeeklyInterval),
            [
                {"staff_id": s["id"], "weekday": d, "start_time": opens, "end_time": closes}
                for s in staff
                for d in range(6)
                for opens, closes in HOURS
            ],
        )
        await session.execute(insert(Service), [service_row(service_id)])
        await session.execute(insert(service_staff), [{"service_id": service_id, "staff_id": s["id"]} for s in staff])
        await session.execute(
            insert(TimeOff),
            [
                {"staff_id": s["id"], "starts_at": start, "ends_at": start + timedelta(days=1), "reason": "off"}
                for s in staff
                for start in (now + timedelta(days=rng.randrange(-180, 180)) for _ in range(3))
            ],
        )
    client_ids = [p["id"] for p in people]
    rows = [a for s in staff for a in _appointments(rng, s["id"], s["timezone"], service_id, client_ids, today)]
    # Rows land in the table in the order they were booked: 0-60 days ahead of their start.
    rows.sort(key=lambda row: row["starts_at"] - timedelta(days=rng.random() * 60))
    for chunk in range(0, len(rows), 10_000):
        async with unit_of_work() as session:
            await session.execute(insert(Appointment), rows[chunk : chunk + 10_000])
    async with get_engine().connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE"))
    await dispose_engine()
    print(f"seeded {STAFF} staff x {PER_STAFF} appointments in {time.perf_counter() - started:.1f} s")
    return World(service_id, [s["id"] for s in staff], [b["email"] for b in bookers])


def server_times(log_path: Path, prefix: str) -> list[float]:
    times = []
    for line in log_path.read_text().splitlines():
        match = LOG_LINE.search(line)
        if match and match.group(1).startswith(prefix):
            times.append(float(match.group(5)))
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


def report(name: str, log_path: Path, prefix: str, round_trips: list[float], extra: str = "") -> float:
    """Print server and round-trip p50/p95; answer the server p95."""
    time.sleep(0.2)  # let the server's log catch up
    server = server_times(log_path, prefix) or round_trips
    print(
        f"{name:<44} n={len(round_trips):<5} server p50 {statistics.median(server):6.1f} ms  p95 {p95(server):6.1f} ms"
        f"   round trip p50 {statistics.median(round_trips):6.1f} ms  p95 {p95(round_trips):6.1f} ms{extra}"
    )
    return p95(server)


TARGETS = {"one staff member": 10.0, f"whole service ({STAFF} staff)": 30.0}  # uncached server p95, ms


async def baseline_run(http: httpx.AsyncClient, log_path: Path, requests: int) -> float:
    """The same process's bare route (`GET /health`, no database): what any request costs here now."""
    round_trips = []
    for i in range(-3, requests):
        began = time.perf_counter()
        response = await http.get("/health", headers={"X-Request-ID": f"bare-{i}"})
        if i >= 0:
            round_trips.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return report("baseline: bare route GET /health", log_path, "bare-", round_trips)


async def availability_runs(
    http: httpx.AsyncClient, world: World, log_path: Path, requests: int, redis_url: str, api_pid: int
) -> None:
    """Per case: `shifted` (each window a minute later than the last: a fresh computation before the
    per-day cache, cached days since), `cached` (the same window again) and `cold` (the cache emptied
    before each request: the full computation, what the targets are about)."""
    import redis.asyncio

    cache = redis.asyncio.Redis.from_url(redis_url)
    base = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=14)
    cases = [("one staff member", {"staff_id": str(world.staff_ids[0])}), (f"whole service ({STAFF} staff)", {})]
    figures: dict[tuple[str, str], float] = {}  # (case, mode) -> server p95
    cpu_ms: dict[tuple[str, str], float] = {}
    for label, extra in cases:
        for mode in ("shifted", "cached", "cold"):
            prefix = f"av-{mode}-{len(extra)}-"
            round_trips, sizes = [], []
            for i in range(-3, requests):  # three warm-up requests, not counted
                start = base if mode == "cached" else base + timedelta(minutes=i + 3)
                params = {
                    "service_id": str(world.service_id),
                    "start": start.isoformat(),
                    "end": (start + timedelta(days=31)).isoformat(),
                    **extra,
                }
                if mode == "cold":
                    for key in await cache.keys("availability*"):
                        await cache.delete(key)
                request_id = prefix + str(i) if i >= 0 else f"warmup-{uuid.uuid4().hex}"
                if i == 0:
                    cpu = cpu_seconds(api_pid)  # from the first counted request on (the cache emptying is idle time)
                began = time.perf_counter()
                response = await http.get("/api/v1/availability", params=params, headers={"X-Request-ID": request_id})
                elapsed = (time.perf_counter() - began) * 1000
                assert response.status_code == 200, response.text
                if i >= 0:
                    round_trips.append(elapsed)
                    sizes.append(len(response.json()["slots"]))
            cpu_ms[label, mode] = (cpu_seconds(api_pid) - cpu) * 1000 / requests
            extra_text = f"   ~{statistics.median(sizes):.0f} slots, API CPU {cpu_ms[label, mode]:.1f} ms/request"
            figures[label, mode] = report(f"31 days, {label}, {mode}", log_path, prefix, round_trips, extra_text)
    await cache.aclose()
    bare = await baseline_run(http, log_path, requests)
    for label, target in TARGETS.items():
        figure = figures[label, "cold"]
        verdict = "met" if figure < target else "NOT met"
        print(
            f"uncached p95, {label}: {figure:.1f} ms (cold, the cache emptied before each request; target"
            f" < {target:.0f} ms: {verdict}; API CPU {cpu_ms[label, 'cold']:.1f} ms/request), beside the bare"
            f" route's p95 {bare:.1f} ms in this run; shifted {figures[label, 'shifted']:.1f} ms,"
            f" cached {figures[label, 'cached']:.1f} ms"
        )


async def booking_run(http: httpx.AsyncClient, world: World, log_path: Path, bookings: int, clients: int) -> None:
    if "/api/v1/appointments" not in (await http.get("/openapi.json")).json()["paths"]:
        print("POST /api/v1/appointments is not there yet: booking throughput skipped")
        return
    tokens = []
    for email in world.client_emails:
        response = await http.post("/api/v1/auth/login", data={"username": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        tokens.append(response.json()["access_token"])
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=60)
    params = {
        "service_id": str(world.service_id),
        "start": start.isoformat(),
        "end": (start + timedelta(days=31)).isoformat(),
    }
    free = (await http.get("/api/v1/availability", params=params)).json()["slots"]
    random.Random(7).shuffle(free)
    queue = iter(enumerate(free[:bookings]))
    statuses: Counter[int] = Counter()
    round_trips: list[float] = []

    async def client(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        for n, slot in queue:
            body = {"service_id": str(world.service_id), "staff_id": slot["staff_id"], "starts_at": slot["starts_at"]}
            began = time.perf_counter()
            response = await http.post(
                "/api/v1/appointments",
                json=body,
                headers={**headers, "X-Request-ID": f"book-{n}", "Idempotency-Key": uuid.uuid4().hex},
            )
            round_trips.append((time.perf_counter() - began) * 1000)
            statuses[response.status_code] += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(token) for token in tokens))
    elapsed = time.perf_counter() - began
    done = sum(statuses.values())
    summary = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    report(
        f"POST /appointments, {clients} concurrent clients",
        log_path,
        "book-",
        round_trips,
        f"\n{'':<44} {done / elapsed:.1f} bookings/s ({summary}) in {elapsed:.1f} s",
    )


async def run(base: str, world: World, log_path: Path, args: argparse.Namespace, redis_url: str) -> None:
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        await availability_runs(http, world, log_path, args.requests, redis_url, PIDS[base])
        if args.bookings:  # bench/booking.py measures booking on its own, with its baseline
            await booking_run(http, world, log_path, args.bookings, args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="availability requests per case")
    parser.add_argument("--bookings", type=int, default=640)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent booking clients")
    args = parser.parse_args()
    with bench_database() as (database_url, redis_url):
        world = asyncio.run(seed(database_url, redis_url, args.concurrency))
        log_path = Path(tempfile.mkdtemp(prefix="c3po-bench-")) / "api.log"
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ENVIRONMENT": "test",
            "LOG_LEVEL": "INFO",  # the request log carries each request's server time
            "LOGIN_ATTEMPTS_PER_IP": "1000000/minute",
            "AVAILABILITY_REQUESTS_PER_IP": "1000000/minute",
            "DB_POOL_SIZE": str(max(10, args.concurrency)),
        }
        with api_server(env, log_path=log_path) as base:
            asyncio.run(run(base, world, log_path, args, redis_url))


if __name__ == "__main__":
    main()
