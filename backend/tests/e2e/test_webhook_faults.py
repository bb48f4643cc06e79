"""Webhooks through the real worker process under faults: SIGKILLed while the receiver holds its
requests, and a receiver that refuses connections for 30 s. Every event arrives, each signature
verifies with `standardwebhooks`, and the receiver sees exactly one distinct `webhook-id` per event
(a delivery whose answer the killed worker never read is repeated with the same id, as the
specification allows: the receiver deduplicates on it)."""

import asyncio
import threading
import time

from sqlalchemy import func, select
from standardwebhooks import Webhook

from app.database import get_sessionmaker, unit_of_work
from app.models import OutboxMessage, Role, User, WebhookAttempt
from app.services.integrations import webhooks
from tests.e2e.test_email_faults import eventually
from tests.factories import unique_email
from tests.httpserver import Request, free_port, serve

EVENTS = 5
OUTAGE_SECONDS = 30
STARTING = 90  # a bound on what includes a worker process starting, even on a loaded machine


async def add_endpoint(url: str) -> str:
    async with unit_of_work() as db:
        admin = User(email=unique_email(), hashed_password="x", full_name="Admin", role=Role.admin.value)
        db.add(admin)
        await db.flush()
        _, secret = await webhooks.create_endpoint(db, admin, {"url": url, "event_types": ["user.erased"]})
    return secret


async def emit(count: int) -> None:
    """Each event in its own committed transaction, handed to arq after the commit as requests do."""
    for i in range(count):
        async with unit_of_work() as db:
            await webhooks.emit(db, "user.erased", [webhooks.Event({"id": f"user-{i}"})])


async def all_delivered() -> bool:
    async with get_sessionmaker()() as db:
        rows = list(await db.scalars(select(OutboxMessage).where(OutboxMessage.kind == "webhook")))
    return len(rows) == EVENTS and all(row.sent_at is not None for row in rows)


def assert_one_webhook_id_per_event(requests: list[Request], secret: str) -> None:
    """Requests cut off mid-body by the kill are no deliveries (a receiver's verification refuses them);
    every complete one must verify."""
    ids_by_event: dict[str, set[str]] = {}
    for request in requests:
        if len(request.body) < int(request.headers["content-length"]):
            continue
        body = Webhook(secret).verify(request.body, request.headers)
        ids_by_event.setdefault(body["data"]["id"], set()).add(request.headers["webhook-id"])
    assert sorted(ids_by_event) == sorted(f"user-{i}" for i in range(EVENTS))
    assert all(len(ids) == 1 for ids in ids_by_event.values()), ids_by_event
    assert len(set().union(*ids_by_event.values())) == EVENTS


def worker_env(stack, set_env, schedule: str) -> None:
    """The worker's settings; the loopback receiver's address is allowed here too (an IP literal is
    checked when the endpoint is added)."""
    stack.env.update(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8", WEBHOOK_RETRY_SCHEDULE=schedule)
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")


async def test_a_worker_killed_mid_delivery_loses_nothing_and_each_event_keeps_one_webhook_id(stack, set_env):
    held = threading.Event()
    release = threading.Event()

    def hold(_: Request):
        held.set()
        release.wait(20)
        return 200, {}, b"ok"

    worker_env(stack, set_env, "0.5,0.5,1,1,2,2,2")
    with serve(hold) as receiver:
        try:
            secret = await add_endpoint(f"{receiver.url}/hooks")
            first = stack.start_worker()
            await emit(EVENTS)
            await eventually(held.is_set, STARTING, "a delivery in progress")
            first.kill()  # SIGKILL while the receiver holds the request: its answer is never read
            assert not await all_delivered()
            release.set()
            stack.start_worker()
            await eventually(all_delivered, 40, "every event delivered")
        finally:
            release.set()
        assert_one_webhook_id_per_event(receiver.requests, secret)


async def test_a_receiver_refusing_connections_for_30_s_gets_every_event_afterwards(stack, set_env):
    worker_env(stack, set_env, "1,2,4,8,8,8,8")
    port = free_port()
    secret = await add_endpoint(f"http://127.0.0.1:{port}/hooks")
    stack.start_worker()
    await emit(EVENTS)
    await eventually(refused_once_each, STARTING, "each event tried once")  # the outage counts from there
    started = time.monotonic()
    while time.monotonic() - started < OUTAGE_SECONDS:
        assert not await all_delivered()
        await asyncio.sleep(0.5)
    with serve(port=port) as receiver:
        await eventually(all_delivered, 30, "every event delivered once the receiver is up")
        assert_one_webhook_id_per_event(receiver.requests, secret)
    async with get_sessionmaker()() as db:
        failed = select(func.count()).select_from(WebhookAttempt).where(WebhookAttempt.error.is_not(None))
        assert await db.scalar(failed) >= EVENTS * 3  # each was tried, and refused, while the receiver was down


async def refused_once_each() -> bool:
    """Every event's first attempt was made (and refused): the worker is up and trying."""
    async with get_sessionmaker()() as db:
        tried = select(func.count(func.distinct(WebhookAttempt.outbox_id))).where(WebhookAttempt.error.is_not(None))
        return await db.scalar(tried) >= EVENTS
