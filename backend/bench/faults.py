"""Fault drills under load: two API processes, two workers, mixed traffic, and one fault each.

    uv run python bench/faults.py [--drill postgres|redis|smtp|worker|all] [--clients 16]

- postgres: stopped (`pg_ctl -m fast`: every session terminated) for 10 s, then started again.
  Meanwhile every answer is 2xx or 503 with `Retry-After` (`database_unavailable`), never a 500;
  once it is back no request sent after it fails (no stale pooled connection); no process restarts.
- redis: killed (its data gone) for 5 s, then started empty: sign-in and booking work again.
- smtp: the SMTP server gone for 30 s: every email delivered once when it is back.
- worker: a worker SIGKILLed under load and replaced: nothing lost, no Message-ID twice.
After each: no overlapping live appointments, exactly the bookings answered 201 stored, every
outbox email received exactly once. Exits 1 when any drill fails. Writes are retried with their
Idempotency-Key after a 503 (as a client should), which is what makes "exactly once" checkable.
"""

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from _checks import verify
from _stack import Stack, World, deployment, seed
from _traffic import Stats, drive

BEFORE, AFTER = 10.0, 15.0
GRACE = 1.0  # requests sent this soon after a server is back may still have been in its outage
OUTAGE_ANSWERS = {"503 database_unavailable", "503 redis_unavailable"}


@dataclass
class Outage:
    began: float = 0.0
    ended: float = 0.0


def tally(events) -> str:
    counts = Counter(event.what for event in events)
    return ", ".join(f"{n} x {what}" for what, n in counts.most_common(6)) or "none"


async def health(stack: Stack) -> dict[str, int]:
    answers = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for api in stack.apis:
            for path in ("/health", "/health/db", "/health/redis"):
                response = await http.get(api.base_url + path)
                answers[f"{api.name}{path}"] = response.status_code
    return answers


async def run_drill(
    stack: Stack,
    clients: int,
    outage_seconds: float,
    fault: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
) -> tuple[World, Stats, Outage, dict[str, int]]:
    world = await seed(stack, staff=10, clients=clients)
    bases = [stack.start_api().base_url for _ in range(2)]
    for _ in range(2):
        stack.start_worker()
    stats, outage = Stats(), Outage()
    load = asyncio.create_task(
        drive(bases, world, clients=clients, seconds=BEFORE + outage_seconds + AFTER, stats=stats)
    )
    await asyncio.sleep(BEFORE)
    outage.began = time.monotonic()
    await fault()
    await asyncio.sleep(max(0.0, outage_seconds - (time.monotonic() - outage.began)) / 2)
    during = await health(stack)
    await asyncio.sleep(max(0.0, outage_seconds - (time.monotonic() - outage.began)))
    await recover()
    outage.ended = time.monotonic()
    await load
    return world, stats, outage, during


async def drill(name: str, clients: int) -> list[str]:
    print(f"\n=== {name} drill: {clients} clients, 2 API processes + 2 workers")
    with deployment() as stack:

        async def noop() -> None:
            return None

        if name == "postgres":
            outage_seconds = 10.0

            async def fault() -> None:
                await asyncio.to_thread(stack.pg.stop, "fast")

            async def recover() -> None:
                await asyncio.to_thread(stack.pg.start)
        elif name == "redis":
            outage_seconds = 5.0

            async def fault() -> None:
                stack.redis.stop()

            async def recover() -> None:
                await asyncio.to_thread(stack.redis.start)
        elif name == "smtp":
            outage_seconds = 30.0

            async def fault() -> None:
                stack.smtp.stop()

            async def recover() -> None:
                stack.smtp.start()
        else:
            outage_seconds = 1.0

            async def fault() -> None:
                victim = stack.workers[0]
                victim.popen.kill()
                victim.popen.wait(10)
                print(f"  SIGKILLed {victim.name} (pid {victim.popen.pid})")
                stack.workers.remove(victim)
                stack.start_worker()

            recover = noop

        world, stats, outage, during = await run_drill(stack, clients, outage_seconds, fault, recover)
        pids = {p.popen.pid for p in stack.apis + stack.workers if p.alive}
        stats.print_table(f"{name} drill traffic")
        down = stats.sent_between(outage.began, outage.ended)
        back = stats.sent_between(outage.ended + GRACE, float("inf"))
        slowest_down = max((e.seconds for e in down), default=0.0)
        print(
            f"  during the outage ({outage.ended - outage.began:.1f} s): {len(down)} requests, "
            f"slowest answer {slowest_down:.2f} s: {tally(down)}"
        )
        print(f"  health checks mid-outage: {during}")
        print(f"  sent after recovery (+{GRACE:g} s): {len(back)} requests: {tally(back)}")
        problems = [f"{len(stats.errors)} errors, e.g. {stats.errors[0]}"] if stats.errors else []
        # Shedding load (server_busy) is fine after recovery too; the outage's own answer is not.
        failed_after = [e for e in back if e.outcome == "error" or e.what in OUTAGE_ANSWERS]
        if failed_after:
            problems.append(f"{len(failed_after)} requests failed after recovery: {tally(failed_after)}")
        if any(e.seconds >= 30 for e in stats.events):
            problems.append("a request stalled 30 s")
        if name in ("postgres", "redis"):
            for kind in ("sign-in", "book"):
                if not any(e.kind == kind and e.outcome == "ok" for e in back):
                    problems.append(f"no {kind} succeeded after recovery")
        if name == "postgres":
            wrong = {e.what for e in down if e.outcome == "shed"} - {"503 database_unavailable", "503 server_busy"}
            if wrong:
                problems.append(f"outage answered with {wrong}")
            if any(status != 200 for path, status in during.items() if path.endswith("/health")):
                problems.append(f"/health did not answer during the outage: {during}")
        dead = [p.name for p in stack.apis + stack.workers if not p.alive]
        if dead or len(pids) != 4:
            problems.append(f"processes died or restarted: {dead}")
        problems += await verify(stack, world, stats)
        logged = stack.process_errors()
        if name != "worker":  # the killed worker's replacement logs nothing special; errors elsewhere are news
            for process, lines in logged.items():
                print(f"  {process} logged {len(lines)} ERROR lines, first: {lines[0][:200]}")
        print(f"RESULT {name}: " + ("FAIL: " + "; ".join(problems) if problems else "PASS"))
        return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drill", choices=["postgres", "redis", "smtp", "worker", "all"], default="all")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    names = ["postgres", "redis", "smtp", "worker"] if args.drill == "all" else [args.drill]
    failed = [name for name in names if asyncio.run(drill(name, args.clients))]
    print(f"\nRESULT faults: {'FAIL: ' + ', '.join(failed) if failed else 'PASS'} ({', '.join(names)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
