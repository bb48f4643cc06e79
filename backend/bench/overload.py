"""Overload drill against one API process: 256 concurrent connections, then a sign-in flood.

    uv run python bench/overload.py [--seconds 20] [--connections 256]

Every request must be answered, 2xx or 503 (`server_busy`, with `Retry-After`), none after a
30-second stall; p99 is printed beside a same-run baseline (the bare `/health` route and
/users/me at low concurrency). During the sign-in flood (argon2 hashing is CPU-heavy by design)
/users/me's p99 is printed beside its p99 without the flood. Exits 1 on any error or 5xx.
"""

import argparse
import asyncio
import sys
import time

import httpx
from _stack import PASSWORD, deployment, percentile, seed
from _traffic import API, Stats, hammer

LOGIN = f"{API}/auth/login"


def line(label: str, stats: Stats, kind: str) -> str:
    values = stats.latencies.get(kind, [])
    elapsed = (stats.finished or time.monotonic()) - stats.started
    answers = ", ".join(f"{n} x {s}" for s, n in sorted(stats.statuses[kind].items(), key=str))
    p50, p99, top = (percentile(values, q) * 1000 for q in (0.5, 0.99, 1.0))
    return (
        f"  {label:<44}{len(values) / elapsed:>8.1f} req/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
        f"  max {top:7.1f} ms  ({answers})"
    )


async def phase(base: str, seconds: float, work: list[tuple[str, dict, int]]) -> Stats:
    """`work`: (kind, request, how many connections send it). One client per connection: httpx's
    pool gets slow with hundreds of connections in one client, and the driver must not be the limit."""
    one = httpx.Limits(max_connections=1)
    clients = [
        (kind, request, httpx.AsyncClient(base_url=base, timeout=30, limits=one, verify=False))
        for kind, request, count in work
        for _ in range(count)
    ]
    stats = Stats()
    until = time.monotonic() + seconds
    try:
        await asyncio.gather(*(hammer(http, kind, request, stats, until) for kind, request, http in clients))
    finally:
        stats.finished = time.monotonic()
        for *_, http in clients:
            await http.aclose()
    return stats


async def run(base: str, emails: list[str], args: argparse.Namespace) -> list[str]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        token = (await http.post(LOGIN, data={"username": emails[0], "password": PASSWORD})).json()["access_token"]
    me = {"method": "GET", "url": f"{API}/users/me", "headers": {"Authorization": f"Bearer {token}"}}
    health = {"method": "GET", "url": "/health"}
    logins = [{"method": "POST", "url": LOGIN, "data": {"username": e, "password": PASSWORD}} for e in emails]
    short = min(args.seconds, 10)

    print(f"baselines (8 connections, {short:g} s each):")
    bare = await phase(base, short, [("health", health, 8)])
    print(line("GET /health (bare route)", bare, "health"))
    calm = await phase(base, short, [("me", me, 8)])
    print(line("GET /users/me", calm, "me"))

    print(f"overload ({args.connections} connections, {args.seconds:g} s):")
    crowd = await phase(base, args.seconds, [("me", me, args.connections)])
    print(line(f"GET /users/me x {args.connections}", crowd, "me"))

    flooders = args.connections // 2
    print(f"sign-in flood ({flooders} connections signing in, 8 reading /users/me, {args.seconds:g} s):")
    flood = await phase(
        base,
        args.seconds,
        [("sign-in", logins[n % len(logins)], 1) for n in range(flooders)] + [("me", me, 8)],
    )
    print(line("POST /auth/login (the flood)", flood, "sign-in"))
    print(line("GET /users/me during the flood", flood, "me"))

    problems = []
    for name, stats in (("baseline", bare), ("baseline", calm), ("overload", crowd), ("flood", flood)):
        if stats.errors:
            problems.append(f"{name}: {len(stats.errors)} errors, e.g. {stats.errors[0]}")
        if not stats.events:
            problems.append(f"{name}: no request was answered")
        if stats.slowest >= 30:
            problems.append(f"{name}: a request took {stats.slowest:.1f} s")
    p99 = percentile(crowd.latencies["me"], 0.99)
    me_p99 = percentile(flood.latencies["me"], 0.99)
    print(
        f"  figures: overload p99 {p99 * 1000:.0f} ms (target < 1000); /users/me p99 during the sign-in flood "
        f"{me_p99 * 1000:.0f} ms (target < 100), without it {percentile(calm.latencies['me'], 0.99) * 1000:.0f} ms"
    )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=256)
    args = parser.parse_args()
    with deployment() as stack:
        world = asyncio.run(seed(stack, staff=1, clients=64))
        api = stack.start_api()
        problems = asyncio.run(run(api.base_url, world.clients, args))
        if not api.alive:
            problems.append("the API process died")
        print("RESULT: " + ("FAIL: " + "; ".join(problems) if problems else "PASS"))
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
