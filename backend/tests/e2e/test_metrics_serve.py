"""`/metrics` across processes: `python -m app serve` with two API processes and a worker.

One booking, one refusal and one cancellation, each made on one process, move their counters by
exactly 1 on a scrape answered by the other process (which process holds a connection is read from
/proc); one failed email moves the worker's by exactly 1. A process killed outright takes none of
the totals with it and no longer counts as serving once it has been replaced.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.database import get_sessionmaker
from app.models import OutboxMessage
from app.redis import close_redis
from tests.e2e.conftest import BACKEND_DIR, Stack
from tests.e2e.test_email_faults import all_sent, eventually
from tests.e2e.test_serve import parent_pid
from tests.factories import create_user
from tests.metrics import Samples, delta, parse, value
from tests.scheduling import URL, booking_body, create_service, create_staff, days_ahead, headers_for, local
from tests.smtp import HOST, free_port

TOKEN = "e2e-metrics-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRANSITIONS = "c3po_appointment_transitions_total"
START = local(days_ahead(7), 11)


@contextmanager
def serve(stack: Stack, log_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """Two API processes on one port, handing their outbox to the stack's Redis; (process, port)."""
    port = free_port()
    env = {**stack.env, "METRICS_TOKEN": TOKEN, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "app", "serve", "--workers", "2", "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            with suppress(httpx.HTTPError):
                if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"serve did not come up:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield process, port
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        print(f"--- serve.log (exit {process.returncode})\n{log_path.read_text(errors='replace')}")


def api_processes(parent: int) -> set[int]:
    """The API processes `serve` started (multiprocessing's spawned children; not its resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        with suppress(OSError, IndexError, ValueError):
            ours = entry.name.isdigit() and parent_pid(int(entry.name)) == parent
            if ours and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
    return found


def serving_pid(response: httpx.Response, server_port: int, candidates: set[int]) -> int:
    """The process holding the server end of the connection `response` came on (from /proc)."""
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            inode = fields[9]
    assert inode is not None, "connection not found in /proc/net/tcp"
    for pid in candidates:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
    raise AssertionError(f"no process of {candidates} holds the connection")


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    return parse(response.text)


async def scrape_each(base: str, port: int, pids: set[int], timeout: float = 120) -> dict[int, Samples]:
    """A scrape answered by each of `pids`: fresh connections until every one has answered (the
    first answers may come before the last process has started: call it twice when that matters)."""
    answers: dict[int, Samples] = {}
    deadline = time.monotonic() + timeout
    while set(answers) != pids:
        assert time.monotonic() < deadline, f"scrapes reached only {set(answers)} of {pids}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            response = await client.get("/metrics", headers=AUTH)
            assert response.status_code == 200, response.text
            answers.setdefault(serving_pid(response, port, pids), parse(response.text))
        await asyncio.sleep(0.02)
    return answers


async def count_outbox(**conditions: bool) -> int:
    async with get_sessionmaker()() as db:
        query = select(func.count()).select_from(OutboxMessage)
        for column, present in conditions.items():
            attribute = getattr(OutboxMessage, column)
            query = query.where(attribute.is_not(None) if present else attribute.is_(None))
        return await db.scalar(query) or 0


@pytest.fixture
async def worker_url(stack: Stack) -> AsyncIterator[str]:
    port = free_port()
    stack.env.update(WORKER_METRICS_PORT=str(port), METRICS_TOKEN=TOKEN, OUTBOX_MAX_ATTEMPTS="1")
    stack.start_worker()
    yield f"http://{HOST}:{port}"
    await close_redis()  # this process's client (sessions were started on the stack's Redis) before it stops


async def test_each_event_moves_its_counter_by_one_whichever_process_answers(stack, worker_url, session, tmp_path):
    staff = await create_staff(session)
    service = await create_service(session, [staff])
    customer, rival = await create_user(session), await create_user(session)
    as_customer, as_rival = await headers_for(customer), await headers_for(rival)
    new, cancel = {"from": "new", "to": "confirmed"}, {"from": "confirmed", "to": "cancelled"}

    with serve(stack, tmp_path / "serve.log") as (process, port):
        base = f"http://{HOST}:{port}"
        await eventually(lambda: len(api_processes(process.pid)) == 2, 60, "two API processes")
        pids = api_processes(process.pid)
        async with httpx.AsyncClient(base_url=worker_url, timeout=10) as worker:
            await eventually(lambda: _answers(worker), 60, "the worker's port")
            await scrape_each(base, port, pids, timeout=180)  # every process has started
            before = await scrape_each(base, port, pids)
            worker_before = await scrape(worker)
            baseline = next(iter(before.values()))
            for samples in before.values():
                assert value(samples, "c3po_api_processes") == 2
                assert value(samples, TRANSITIONS, **new) == value(baseline, TRANSITIONS, **new)

            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                booked = await http.post(URL, json=booking_body(service, staff, START), headers=as_customer)
                assert booked.status_code == 201, booked.text
                refused = await http.post(URL, json=booking_body(service, staff, START), headers=as_rival)
                assert refused.status_code in (409, 422), refused.text
                cancelled = await http.post(f"{URL}/{booked.json()['id']}/cancel", json={}, headers=as_customer)
                assert cancelled.status_code == 200, cancelled.text
                served_by = {serving_pid(answer, port, pids) for answer in (booked, refused, cancelled)}

            # Each process answers with every process's totals: at least one of them counts events it never saw.
            after = await scrape_each(base, port, pids)
            assert pids - served_by or len(served_by) == 2
            code = refused.json()["code"]
            for samples in after.values():
                assert delta(baseline, samples, TRANSITIONS, **new) == 1
                assert delta(baseline, samples, TRANSITIONS, **cancel) == 1
                assert delta(baseline, samples, "c3po_booking_refusals_total", code=code) == 1

            # The booking's and cancellation's emails go out; then one that cannot (OUTBOX_MAX_ATTEMPTS=1).
            await eventually(all_sent, 60, "the booking and cancellation emails sent")
            sent = await count_outbox(sent_at=True)
            stack.smtp.stop()
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                reset = await http.post("/api/v1/auth/password-reset", json={"email": customer.email})
            assert reset.status_code == 202, reset.text
            await eventually(_one_given_up, 60, "the reset email given up")

            worker_after = await scrape(worker)
            assert delta(worker_before, worker_after, "c3po_email_failures_total", template="password_reset") == 1
            assert delta(worker_before, worker_after, "c3po_emails_given_up_total", template="password_reset") == 1
            assert total_delta(worker_before, worker_after, "c3po_emails_sent_total") == sent

        # A process killed outright is replaced; its counts stay (it served the events), and it no longer
        # counts as serving (the supervisor marked it dead: its live gauge file is gone).
        killed = next(iter(served_by))
        os.kill(killed, signal.SIGKILL)
        await eventually(lambda: _replaced(process.pid, killed), 60, "a replacement API process")
        serving = api_processes(process.pid)
        await scrape_each(base, port, serving, timeout=180)  # both serve (the replacement has started)
        final = await scrape_each(base, port, serving)
        for samples in final.values():
            assert delta(baseline, samples, TRANSITIONS, **new) == 1
            assert delta(baseline, samples, TRANSITIONS, **cancel) == 1
            assert value(samples, "c3po_api_processes") == 2


def total_delta(before: Samples, after: Samples, name: str) -> float:
    labels = {labels for sample, labels in (*before, *after) if sample == name}
    return sum(delta(before, after, name, **dict(label_set)) for label_set in labels)


async def _answers(client: httpx.AsyncClient) -> bool:
    with suppress(httpx.HTTPError):
        return (await client.get("/health")).status_code == 200
    return False


async def _one_given_up() -> bool:
    return await count_outbox(failed_at=True) == 1


def _replaced(parent: int, killed: int) -> bool:
    serving = api_processes(parent)
    return killed not in serving and len(serving) == 2
