"""The worker: delivers the outbox (each row once, retried with backoff, relayed from Postgres) and
runs the reminder cron (`app.services.messaging.reminders`) and, every minute, the expiry of pending
appointments nobody confirmed in time (`app.services.booking.expiry`) and of waitlist offers nobody
claimed, with a scan of the waitlist (`app.services.booking.waitlist`, also queued by every calendar
change), purges expired idempotency keys every ten
minutes, syncs staff members' external calendars (`app.services.integrations.calendar_sync`, due
ones every minute and on demand) and, daily, everything past its retention (`app.services.retention`).

Two paths lead to `attempt_delivery`, which claims the row for `outbox_lease_seconds` in a short
transaction (`claimed_by`, `claimed_until`), sends it with no transaction open, and records `sent_at`
in another, so a retried job or a second worker finds nothing to do; a claim whose worker died runs
out and the row is taken over. A send is noted in Redis (`outbox-sent:<id>`, a day) before it is
recorded, so a row taken over after its message went out (Postgres away past the claim, the worker
killed after the 250) is recorded sent, not sent again; only a send whose note was lost too (Redis
away, or a kill between the 250 and the note) is repeated, with the same Message-ID:

- the arq job `deliver_outbox`, queued after the commit that wrote the row (job id = outbox id
  and attempt); after a failed attempt it queues the next one at the row's `next_attempt_at`;
- the relay, every `outbox_relay_seconds`, for rows still undelivered one period after they were
  due: never handed to the queue (Redis was down), or whose retry job was lost.

`arq app.services.messaging.worker.WorkerSettings` runs the worker bare; `run_worker()` (`python -m app
worker`) runs it under `supervise`, which keeps the relay going on its own and starts arq again
whenever Redis drops it (arq's poll loop stops on the first Redis error).

Either way the worker reports to Sentry when `SENTRY_DSN` is set (sentry-sdk's arq integration, the
API's scrubbing: `app.sentry`), counts what it does (`app.metrics`, the worker's registry) and, with
`WORKER_METRICS_PORT`, serves `/health` and `/metrics` (`probe.py`).
"""

import asyncio
import os
import secrets
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import worker as arq_worker
from arq.connections import ArqRedis, RedisSettings
from arq.cron import CronJob, cron
from arq.worker import Function, Worker, func
from loguru import logger
from sqlalchemy import case, or_, select, update
from sqlalchemy import func as sql
from sqlalchemy.exc import DBAPIError

from app.config import get_settings
from app.database import dispose_engine, get_sessionmaker, set_role
from app.logging import setup_logging
from app.metrics import EMAIL_FAILURES, EMAIL_SEND_SECONDS, EMAILS_GIVEN_UP, EMAILS_SENT, QUEUE_RESTARTS, RELAY_PASSES
from app.models import OutboxMessage
from app.redis import get_redis, warn_unless_noeviction
from app.sentry import init_sentry
from app.services.booking import waitlist
from app.services.booking.expiry import expire_pending_appointments
from app.services.integrations import calendar_sync, webhook_delivery
from app.services.messaging.mailer import send_email
from app.services.messaging.outbox import (
    DELIVER_JOB,
    get_arq_pool,
    job_id,
    queue_redis_is_app_redis,
    queue_redis_settings,
    redacted,
    sent_key,
)
from app.services.messaging.probe import HEARTBEAT, start_probe
from app.services.messaging.reminders import send_due_reminders
from app.services.retention import purge_expired_idempotency_keys, purge_retained
from app.services.scheduling.availability_changes import CALENDAR_CHANGED_JOB

SUPERVISED = "supervised"  # ctx flag: the caller runs the relay and owns logging and the engine
JOB_TIMEOUT_SECONDS = 60
RETENTION_TIMEOUT_SECONDS = 3600  # a first run may meet a long backlog; it goes in short transactions
JOB_CLOCK_SLACK = timedelta(seconds=0.25)  # arq defers by the worker's clock, the row is checked by the database's
RELAY_BATCH = 100
RESTART_MAX_DELAY_SECONDS = 5
MARK_RETRY_SECONDS = 0.2  # first pause before recording a sent message again (Postgres away)
SENT_NOTE_SECONDS = 86_400  # how long Redis remembers a send that PostgreSQL may not have recorded
LEASE_USE = 0.8  # an attempt sends within this share of its lease; the rest is for recording the outcome

Handler = Callable[[int, datetime, Mapping[str, Any]], Awaitable[None]]
RetryPolicy = Callable[[int, Exception], timedelta | None]  # (failed attempts, last error) -> pause, None: give up
HANDLERS: dict[str, Handler] = {"email": send_email, "webhook": webhook_delivery.send_webhook}


@dataclass(frozen=True)
class Attempt:
    outbox_id: int
    sent: bool
    attempts: int  # failed attempts so far
    retry_at: datetime | None  # when the next try is due; None once sent or given up


@dataclass(frozen=True)
class Claim:
    """An outbox row this attempt holds until `claimed_until` (the database's clock); `token` is its `claimed_by`."""

    id: int
    kind: str
    created_at: datetime
    payload: dict[str, Any]
    attempts: int
    token: str
    taken_over: bool = False  # an earlier attempt's claim ran out: it may have sent the message

    @property
    def template(self) -> str:
        """The label of its email counters: the template's name (a fixed set)."""
        return str(self.payload.get("template") or self.kind)


def backoff(attempts: int) -> timedelta:
    """2 s, 4 s, 8 s, ... capped (settings `outbox_backoff_seconds`, `outbox_backoff_max_seconds`)."""
    settings = get_settings()
    seconds = settings.outbox_backoff_seconds * 2 ** min(max(attempts - 1, 0), 30)
    return timedelta(seconds=min(seconds, settings.outbox_backoff_max_seconds))


def email_retry(attempts: int, error: Exception) -> timedelta | None:
    """Emails: `backoff` until `outbox_max_attempts` attempts have failed."""
    return None if attempts >= get_settings().outbox_max_attempts else backoff(attempts)


# Each kind chooses its retry schedule; webhooks follow the Standard Webhooks guidance (WEBHOOK_RETRY_SCHEDULE).
RETRY_POLICIES: dict[str, RetryPolicy] = {"email": email_retry, "webhook": webhook_delivery.retry_delay}


async def attempt_delivery(outbox_id: int | None = None, *, due_within: timedelta = timedelta()) -> Attempt | None:
    """Deliver one undelivered row due by `now() + due_within`: that one, or the longest waiting.

    Three steps, none holding a transaction across the network: claim the row (one short
    transaction), send it (within `LEASE_USE` of the lease, so it ends before another worker may
    take the row over), record the outcome (another short transaction).

    None when there is nothing to do: sent already, given up, not due, or claimed by another attempt.
    Failures are recorded on the row, never raised.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()  # before the claim: the lease, counted by the database, starts later
    claim = await _claim(outbox_id, due_within)
    if claim is None:
        return None
    if claim.taken_over and await _sent_before(claim):
        logger.warning("outbox {}: the attempt before this one sent it; recorded as sent, not sent again", claim.id)
        return await _record_sent(claim, until=started + get_settings().outbox_lease_seconds)
    budget = get_settings().outbox_lease_seconds * LEASE_USE - (loop.time() - started)
    cutoff = asyncio.timeout(budget)
    try:
        async with cutoff:
            await HANDLERS[claim.kind](claim.id, claim.created_at, claim.payload)
    except Exception as error:
        cut_off = TimeoutError(f"cut off after {budget:.1f}s, {LEASE_USE:.0%} of the claim (OUTBOX_LEASE_SECONDS)")
        return await _record_failure(claim, cut_off if cutoff.expired() else error)
    if claim.kind == "email":
        EMAIL_SEND_SECONDS.observe(loop.time() - started)
    await _note_sent(claim)
    return await _record_sent(claim, until=started + get_settings().outbox_lease_seconds)


def _sent_key(outbox_id: int) -> str:
    return sent_key(outbox_id)


async def _note_sent(claim: Claim) -> None:
    """Note in Redis that the message is out, before recording it in PostgreSQL: should that record
    never land (Postgres away for longer than the claim, the worker killed), whoever takes the row
    over records it sent instead of sending it a second time. Redis away: the record in PostgreSQL,
    tried until the claim runs out, is the only guard (as before)."""
    try:
        await get_redis().set(_sent_key(claim.id), claim.token, ex=SENT_NOTE_SECONDS)
    except Exception:
        logger.opt(exception=True).warning("outbox {}: could not note the send in Redis", claim.id)


async def _sent_before(claim: Claim) -> bool:
    try:
        return bool(await get_redis().exists(_sent_key(claim.id)))
    except Exception:  # unknown: send (at least once beats never)
        logger.opt(exception=True).warning("outbox {}: could not read Redis for an earlier send", claim.id)
        return False


async def _claim(outbox_id: int | None, due_within: timedelta) -> Claim | None:
    """Claim one row: `WITH candidate AS MATERIALIZED (SELECT ... FOR UPDATE SKIP LOCKED) UPDATE`,
    committed at once.

    A row still claimed by an attempt that never finished (its worker died) counts that attempt
    as failed, so a message that kills its sender is given up in the end like any other.
    """
    settings = get_settings()
    due = select(OutboxMessage.id, OutboxMessage.claimed_by.label("previous")).where(
        OutboxMessage.sent_at.is_(None),
        OutboxMessage.failed_at.is_(None),
        OutboxMessage.next_attempt_at <= sql.now() + due_within,
        or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < sql.now()),
    )
    if outbox_id is None:
        due = due.order_by(OutboxMessage.next_attempt_at).limit(1)
    else:
        due = due.where(OutboxMessage.id == outbox_id)
    # A materialized CTE runs once. As a subquery joined to the UPDATE it may be scanned again for
    # each row (a nested loop, when the table looks nearly empty to the planner), and on a rescan
    # SKIP LOCKED passes over the row just claimed and picks the next: one claim, several rows.
    candidate = due.with_for_update(skip_locked=True).cte("candidate").prefix_with("MATERIALIZED")
    token = f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"  # who, and which attempt
    abandoned = candidate.c.previous.is_not(None)
    claim = (
        update(OutboxMessage)
        .where(OutboxMessage.id == candidate.c.id)
        .values(
            claimed_by=token,
            claimed_until=sql.now() + timedelta(seconds=settings.outbox_lease_seconds),
            attempts=OutboxMessage.attempts + case((abandoned, 1), else_=0),
            last_error=case(
                (abandoned, sql.concat("claim of ", candidate.c.previous, " ran out")),
                else_=OutboxMessage.last_error,
            ),
        )
        .returning(
            OutboxMessage.id,
            OutboxMessage.kind,
            OutboxMessage.created_at,
            OutboxMessage.payload,
            OutboxMessage.attempts,
            candidate.c.previous,
        )
    )
    async with get_sessionmaker()() as session, session.begin():
        row = (await session.execute(claim)).one_or_none()
    if row is None:
        return None
    if row.previous is not None:
        logger.warning("outbox {}: the claim of {} ran out; trying again", row.id, row.previous)
    return Claim(row.id, row.kind, row.created_at, row.payload, row.attempts, token, row.previous is not None)


async def _record_sent(claim: Claim, *, until: float) -> Attempt:
    """Mark the row sent and release its claim, trying again while Postgres is away until the claim
    runs out (`until`, loop time): after that another worker would send the message a second time.

    Recorded even if the claim ran out meanwhile: the message is out, and the mark stops whoever
    took the row over from retrying it again.
    """
    loop = asyncio.get_running_loop()
    delay = MARK_RETRY_SECONDS
    while True:
        try:
            await _mark_sent(claim)
            break
        except (DBAPIError, OSError):
            if loop.time() + delay > until:
                raise
            logger.warning("outbox {} was sent but could not be marked yet; trying again", claim.id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    if claim.kind == "email":
        EMAILS_SENT.labels(claim.template).inc()
    logger.info("outbox {} ({}) sent", claim.id, claim.kind)
    return Attempt(claim.id, sent=True, attempts=claim.attempts, retry_at=None)


async def _mark_sent(claim: Claim) -> None:
    mark = (
        update(OutboxMessage)
        .where(OutboxMessage.id == claim.id, OutboxMessage.sent_at.is_(None))
        .values(
            sent_at=sql.now(),
            failed_at=None,
            payload=redacted(claim.payload),
            claimed_by=None,
            claimed_until=None,
        )
    )
    async with get_sessionmaker()() as session, session.begin():
        held = await session.execute(mark.where(OutboxMessage.claimed_by == claim.token))
        if not held.rowcount:  # type: ignore[attr-defined]
            await session.execute(mark)
            logger.warning("outbox {} was sent after its claim ran out; another attempt may repeat it", claim.id)


async def _record_failure(claim: Claim, exc: Exception) -> Attempt | None:
    """Count the failed attempt and schedule the next (or give up); only while the claim is still ours."""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    email = claim.kind == "email"
    if email:
        EMAIL_FAILURES.labels(claim.template).inc()
    async with get_sessionmaker()() as session, session.begin():
        row = await session.scalar(
            select(OutboxMessage)
            .where(OutboxMessage.id == claim.id, OutboxMessage.claimed_by == claim.token)
            .with_for_update()
        )
        if row is None:
            logger.warning("outbox {} attempt failed after its claim ran out: {}", claim.id, error)
            return None
        now = datetime.now(UTC)
        row.attempts += 1
        row.last_error = error
        row.claimed_by = row.claimed_until = None
        delay = RETRY_POLICIES[claim.kind](row.attempts, exc)
        if delay is None:
            row.failed_at = now
            if email:
                EMAILS_GIVEN_UP.labels(claim.template).inc()
            else:
                webhook_delivery.given_up(exc)
            logger.error("outbox {} given up after {} attempts: {}", row.id, row.attempts, error)
            return Attempt(row.id, sent=False, attempts=row.attempts, retry_at=None)
        row.next_attempt_at = retry_at = now + delay
        logger.warning("outbox {} attempt {} failed: {}; next at {}", row.id, row.attempts, error, retry_at)
        return Attempt(row.id, sent=False, attempts=row.attempts, retry_at=retry_at)


async def deliver_outbox(ctx: dict[str, Any], outbox_id: int) -> str:
    """The arq job: one attempt at one row; after a failure, queue the next attempt for when it is due."""
    attempt = await attempt_delivery(outbox_id, due_within=JOB_CLOCK_SLACK)
    if attempt is None:
        return "nothing to do"
    if attempt.retry_at is not None:
        try:
            redis: ArqRedis = ctx["redis"]
            next_id = job_id(outbox_id, attempt.attempts)
            await redis.enqueue_job(DELIVER_JOB, outbox_id, _job_id=next_id, _defer_until=attempt.retry_at)
        except Exception:  # the relay picks the row up once it is overdue
            logger.opt(exception=True).warning("could not queue the retry of outbox {}", outbox_id)
        return f"attempt {attempt.attempts} failed"
    return "sent" if attempt.sent else "given up"


async def relay_once(stop: asyncio.Event | None = None) -> int:
    """One pass over rows overdue by more than one relay period; returns how many were attempted."""
    overdue = timedelta(seconds=get_settings().outbox_relay_seconds)
    attempted = 0
    while attempted < RELAY_BATCH and not (stop and stop.is_set()):
        HEARTBEAT.beat()  # each attempt is bounded by its lease: progress, even through a slow mail server
        if await attempt_delivery(due_within=-overdue) is None:
            break
        attempted += 1
    return attempted


async def relay_forever(stop: asyncio.Event) -> None:
    settings = get_settings()
    interval = settings.outbox_relay_seconds
    while not stop.is_set():
        try:
            if attempted := await relay_once(stop):
                logger.info("relay attempted {} overdue outbox rows", attempted)
            RELAY_PASSES.labels("ok").inc()
        except Exception:  # Postgres away: keep trying, the rows wait
            RELAY_PASSES.labels("failed").inc()
            logger.opt(exception=True).warning("outbox relay pass failed; next in {}s", interval)
        HEARTBEAT.beat()  # alive, even while Postgres is away
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def _finish_relay(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Let the send in progress be recorded (a cancelled one is repeated once its claim runs out), then stop."""
    stop.set()
    done, _ = await asyncio.wait({task}, timeout=get_settings().outbox_lease_seconds * LEASE_USE + 5)
    if not done:
        task.cancel()
        await asyncio.wait({task})


async def startup(ctx: dict[str, Any]) -> None:
    """Bare arq (`arq ...WorkerSettings`): what `run_worker` does around `supervise`. Sentry starts
    here, after arq built its worker, so it sees job failures through the logs rather than as arq jobs."""
    if ctx.get(SUPERVISED):
        return
    settings = get_settings()
    setup_logging(settings)
    init_sentry(settings, integrations=_sentry_integrations())
    set_role("worker")
    ctx["probe"] = await start_probe(settings)
    await _check_eviction_policies()
    ctx["relay_stop"] = stop = asyncio.Event()
    ctx["relay"] = asyncio.create_task(relay_forever(stop))


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get(SUPERVISED):
        return
    if "relay" in ctx:
        await _finish_relay(ctx.pop("relay"), ctx.pop("relay_stop"))
    if probe := ctx.pop("probe", None):
        probe.close()
    await dispose_engine()


def redis_settings() -> RedisSettings:
    return queue_redis_settings()  # one Redis, never a cluster: arq's MULTI spans its keys


async def sync_calendar(ctx: dict[str, Any], connection_id: str) -> str:
    """The arq job behind `POST .../calendars/{id}/sync`: one connection, now (unless already being synced)."""
    outcome = await calendar_sync.sync_connection(uuid.UUID(connection_id))
    if outcome is None:
        return "nothing to do"
    return "ok" if outcome.ok else "failed"


async def sync_due_calendars(ctx: dict[str, Any]) -> int:
    """The cron: connections whose `next_sync_at` has come (every CALENDAR_SYNC_MINUTES each), claimed
    one by one so two workers never sync the same connection."""
    return await calendar_sync.sync_due()


def _functions() -> list[Function]:
    return [
        func(deliver_outbox, name=DELIVER_JOB, max_tries=3),  # tries again only if cancelled
        func(sync_calendar, name=calendar_sync.SYNC_JOB, max_tries=1, timeout=calendar_sync.LEASE.total_seconds()),
        # A calendar changed (`availability.invalidate_after_commit`): offer what it freed to the waitlist.
        func(waitlist.scan_changed_calendars, name=CALENDAR_CHANGED_JOB, max_tries=1, keep_result=0),
    ]


def _cron_jobs() -> list[CronJob]:
    # Every minute and at start (catch-up); the id per minute keeps two workers from both running it.
    return [
        cron(send_due_reminders, second=0, run_at_startup=True, keep_result=120),
        cron(expire_pending_appointments, second=5, run_at_startup=True, keep_result=120),
        cron(waitlist.expire_and_scan, second=25, run_at_startup=True, keep_result=120),
        # Idempotency keys live 24 h; a sweep every ten minutes keeps the table small.
        cron(sync_due_calendars, second=15, run_at_startup=True, timeout=300, keep_result=120),
        cron(purge_expired_idempotency_keys, minute=set(range(0, 60, 10)), second=30, keep_result=600),
        cron(
            purge_retained,
            hour=get_settings().retention_hour,
            minute=17,
            second=45,
            timeout=RETENTION_TIMEOUT_SECONDS,
            keep_result=86400,
        ),
    ]


def _sentry_integrations() -> list[Any]:
    from sentry_sdk.integrations.arq import ArqIntegration

    return [ArqIntegration()]


class WorkerSettings:
    functions = _functions()
    cron_jobs = _cron_jobs()
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = redis_settings()
    max_jobs = 10
    job_timeout = JOB_TIMEOUT_SECONDS
    job_completion_wait = 20  # on SIGTERM, let sends in progress finish and commit
    keep_result = 3600  # a finished job's id stays taken, so the same attempt is not queued again


async def supervise(stop: asyncio.Event) -> None:
    """Run the relay and the arq worker until `stop` is set; start arq again whenever it falls over."""
    relay = asyncio.create_task(relay_forever(relay_stop := asyncio.Event()))
    failures = 0
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            # Sentry's arq integration wraps the jobs of the settings it is given, in place, each time
            # (`arq.worker.create_worker`, looked up now, is its patched version): fresh ones each time.
            fresh = dict(vars(WorkerSettings), functions=_functions(), cron_jobs=_cron_jobs())
            worker = arq_worker.create_worker(
                fresh,
                ctx={SUPERVISED: True},
                redis_settings=replace(redis_settings(), conn_retries=0),  # we retry, with backoff
                handle_signals=False,
            )
            started = loop.time()
            error = await _run_until(worker, stop)
            await _retire(worker)
            if stop.is_set():
                break
            failures = 1 if loop.time() - started > 60 else failures + 1
            delay = min(2 ** (failures - 1), RESTART_MAX_DELAY_SECONDS)
            QUEUE_RESTARTS.inc()
            logger.warning("arq worker stopped ({}); starting it again in {}s", error, delay)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        await _finish_relay(relay, relay_stop)


async def _run_until(worker: Worker, stop: asyncio.Event) -> str:
    """Run arq until it fails (returns why) or `stop` is set (lets jobs in progress finish)."""
    run = asyncio.create_task(worker.async_run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        run.cancel()
        raise
    finally:
        stopping.cancel()
    if not run.done():
        worker.handle_sig_wait_for_completion(signal.SIGTERM)
        await asyncio.wait({run})
    if run.cancelled():
        return "stopped"
    error = run.exception()
    return f"{type(error).__name__}: {error}" if error else "returned"


async def _retire(worker: Worker) -> None:
    """Wait for jobs in progress (they commit to Postgres, not Redis), then drop the Redis pool."""
    tasks = list(worker.tasks.values())
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=JOB_TIMEOUT_SECONDS + 5)
        for task in pending:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:  # their Redis bookkeeping may have failed with Redis gone: expected
            if not task.cancelled() and task.exception():
                logger.debug("arq job bookkeeping failed: {}", task.exception())
    if worker.pool is not None:
        with suppress(Exception):
            await worker.pool.aclose()


async def _check_eviction_policies() -> None:
    """The queue's Redis above all: an evicted job or sent-note is a lost or repeated email."""
    await warn_unless_noeviction(get_redis(), "app")
    if not queue_redis_is_app_redis():
        await warn_unless_noeviction(await get_arq_pool(), "queue")


async def _serve() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    probe = await start_probe(get_settings())
    await _check_eviction_policies()
    try:
        await supervise(stop)
    finally:
        if probe is not None:
            probe.close()
        await dispose_engine()


def run_worker() -> None:
    """`python -m app worker`: deliver the outbox until SIGINT or SIGTERM, riding out Redis outages."""
    settings = get_settings()
    setup_logging(settings)
    set_role("worker")
    if not settings.database_url or not settings.redis_url:
        raise SystemExit("the worker needs DATABASE_URL and REDIS_URL")
    init_sentry(settings, integrations=_sentry_integrations())
    logger.info("outbox worker starting (relay every {}s)", settings.outbox_relay_seconds)
    asyncio.run(_serve())


if __name__ == "__main__":
    run_worker()
