"""`GET /api/v1/users/me` throughput and latency on one uvicorn process, beside a bare route in the same process.

    uv run python bench/users_me.py [--connections 64] [--seconds 8] [--rounds 2] [--log-level INFO] [--profile FILE]

The server is the real app (production settings: JSON access log at INFO to a file, metrics on) in
one uvicorn process pinned to CPU 0 with `taskset`; the client is `wrk` (`apt-get install -y wrk`)
pinned to CPU 1, one thread, keep-alive connections. Each round measures the bare route
(`bench/_bench_app.py`: a FastAPI app with one route and no middleware, in the same process) and then
`/users/me` with one signed-in user's access token, so both see the same machine load. Any non-2xx
answer or socket error fails the run. Beside req/s it prints the server's CPU time per request (from
/proc): on a shared machine the server gets only part of its core, and req per CPU-second is the figure
that load does not move much. `--profile FILE` records the server with py-spy (a dev dependency)
during the last round's /users/me run and writes collapsed stacks (`--format raw`). Uses
BENCH_DATABASE_URL/BENCH_REDIS_URL (or TEST_*), else embedded servers; always a throwaway database.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _bench_app import BARE_PATH
from _harness import BENCH_SECRET_KEY, api_server, bench_database, cpu_seconds

PASSWORD = "a bench password that nobody uses"
EMAIL = "bench-me@example.com"
ME = "/api/v1/users/me"
SERVER_CPU, CLIENT_CPU = "0", "1"

# wrk prints this one JSON line at the end (its own summary has no p95 and no machine-readable form).
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "non2xx": %d, "socket_errors": %d, "p50": %f, "p95": %f, "p99": %f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
"""


async def seed(database_url: str, redis_url: str) -> None:
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    from app.database import dispose_engine, unit_of_work
    from app.services.accounts.users import create_user

    async with unit_of_work() as session:
        await create_user(session, email=EMAIL, password=PASSWORD, full_name="Bench Me")
    await dispose_engine()


def sign_in(base: str) -> str:
    response = httpx.post(base + "/api/v1/auth/login", data={"username": EMAIL, "password": PASSWORD}, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


def wrk(
    url: str, *, connections: int, seconds: int, headers: dict[str, str], script: Path, pid: int
) -> dict[str, float]:
    used = cpu_seconds(pid)
    command = [
        "taskset",
        "-c",
        CLIENT_CPU,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    used = cpu_seconds(pid) - used
    report = json.loads(output.strip().splitlines()[-1])
    if report["non2xx"] or report["socket_errors"]:
        raise SystemExit(f"{url}: {report['non2xx']} non-2xx answers, {report['socket_errors']} socket errors")
    report["rps"] = report["requests"] / report["seconds"]
    report["cpu_ms"] = used * 1000 / report["requests"]
    report["cpu_share"] = used / report["seconds"]
    return report


def start_profiler(pid: int, path: str) -> subprocess.Popen:
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "-o", path, "--nonblocking", "--rate", "250"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached before the run starts
    return spy


def stop_profiler(spy: subprocess.Popen) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(30)


def line(name: str, result: dict[str, float], connections: int) -> str:
    return (
        f"{name:<24} {result['requests']:>7} requests  {result['rps']:8.1f} req/s  p50 {result['p50']:6.2f} ms  "
        f"p95 {result['p95']:6.2f} ms  p99 {result['p99']:6.2f} ms  ({connections} connections)  server CPU "
        f"{result['cpu_ms']:.3f} ms/request = {1000 / result['cpu_ms']:5.0f} req per CPU-second "
        f"(it got {result['cpu_share']:.0%} of a core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--log-level", default="INFO", help="the API's LOG_LEVEL (INFO writes an access line per request)"
    )
    parser.add_argument("--profile", help="write py-spy's collapsed stacks of the last /users/me run here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="c3po-bench-me-"))
    script = workdir / "report.lua"
    script.write_text(WRK_REPORT)
    with bench_database() as (database_url, redis_url):
        asyncio.run(seed(database_url, redis_url))
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "ENVIRONMENT": "production",
            "SECRET_KEY": BENCH_SECRET_KEY,
            "LOG_LEVEL": args.log_level,
        }
        log_path = workdir / "api.log"
        with api_server(env, log_path=log_path, factory="_bench_app:create_app", cpus=SERVER_CPU) as base:
            headers = {"Authorization": f"Bearer {sign_in(base)}"}
            pid = httpx.get(base + BARE_PATH).json()["pid"]
            print(
                f"one uvicorn process (uvloop, httptools) on CPU {SERVER_CPU}; wrk -t1 -c{args.connections} "
                f"-d{args.seconds}s on CPU {CLIENT_CPU}; LOG_LEVEL={args.log_level} (log: {log_path})"
            )
            for url, extra in ((base + BARE_PATH, {}), (base + ME, headers)):  # warm-up
                wrk(url, connections=args.connections, seconds=2, headers=extra, script=script, pid=pid)
            bare_rps, me_rps, bare_cpu, me_cpu = [], [], [], []
            for round_no in range(1, args.rounds + 1):
                run = {"connections": args.connections, "seconds": args.seconds, "script": script, "pid": pid}
                bare = wrk(base + BARE_PATH, headers={}, **run)
                spy = start_profiler(pid, args.profile) if args.profile and round_no == args.rounds else None
                me = wrk(base + ME, headers=headers, **run)
                if spy is not None:
                    stop_profiler(spy)
                print(f"round {round_no}", flush=True)
                print("  " + line("bare route (baseline)", bare, args.connections))
                print("  " + line(f"GET {ME}", me, args.connections))
                bare_rps.append(bare["rps"])
                me_rps.append(me["rps"])
                bare_cpu.append(bare["cpu_ms"])
                me_cpu.append(me["cpu_ms"])
            bare_median, me_median = statistics.median(bare_rps), statistics.median(me_rps)
            bare_per_cpu, me_per_cpu = 1000 / statistics.median(bare_cpu), 1000 / statistics.median(me_cpu)
            print(
                f"median: /users/me {me_median:.0f} req/s, bare route {bare_median:.0f} req/s "
                f"({me_median / bare_median:.0%} of the baseline); per CPU-second of the server: "
                f"/users/me {me_per_cpu:.0f}, bare route {bare_per_cpu:.0f} ({me_per_cpu / bare_per_cpu:.0%})"
            )


if __name__ == "__main__":
    main()
