"""Mixed traffic against two API processes and two workers, then the invariants.

    uv run python bench/load.py [--seconds 60] [--clients 32]

Starts its own PostgreSQL, Redis and SMTP capture (nothing shared is touched). Virtual clients sign
in, read availability, book, reschedule, cancel and read /users/me; prints throughput and
p50/p95/p99 per kind. Afterwards: no two live appointments of a staff member overlap, the database
holds exactly the bookings answered 201, and every booking mailed its client and its staff member
exactly once (each outbox email arrived once, by Message-ID). Exits 1 on any error, 5xx or breach.
"""

import argparse
import asyncio
import sys

from _checks import verify
from _stack import deployment, seed
from _traffic import drive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2, help="API processes (and as many workers)")
    args = parser.parse_args()
    with deployment() as stack:
        world = asyncio.run(seed(stack, staff=10, clients=args.clients))
        bases = [stack.start_api().base_url for _ in range(args.processes)]
        for _ in range(args.processes):
            stack.start_worker()
        print(
            f"load: {args.clients} clients, {args.processes} API processes + {args.processes} workers, "
            f"{args.seconds:g} s"
        )
        stats = asyncio.run(drive(bases, world, clients=args.clients, seconds=args.seconds))
        stats.print_table("mixed traffic")
        problems = asyncio.run(verify(stack, world, stats))
        problems += [f"{len(stats.errors)} errors"] if stats.errors else []
        problems += [f"{name}: {lines[0]}" for name, lines in stack.process_errors().items()]
        print("RESULT: " + ("FAIL: " + "; ".join(problems) if problems else "PASS"))
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
