"""Syncing an external calendar: fetch it, expand its busy time, replace the connection's blocks.

A sync claims its connection (`claimed_until`, committed at once, so two workers never sync one
connection together), fetches with no transaction open (through the egress guard, capped at
`CALENDAR_MAX_BYTES`), expands the events over now - 1 day .. the staff member's booking horizon
(the largest `max_advance_days` of the services they offer), then in one transaction takes the
staff member's calendar lock exclusively, replaces the blocks and records success. Bookings take
that lock shared and read the blocks after taking it, so a booking either committed before the
blocks were written (it is listed in `Outcome.covered`, like a time off lists what it covers) or
sees them and is refused.

With `push_appointments` (CalDAV), the staff member's own appointments are then written to the
calendar (`caldav_push`) before the blocks are stored.

A failure (refused address, no answer, a non-2xx status, too large, unreadable, too many events,
a refused write of a pushed appointment)
keeps the last good blocks and records the error; the `CALENDAR_ALERT_FAILURES`-th failure in a
row emails the staff member and the admins once, until a sync succeeds again.
"""

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidTag
from icalendar import Calendar
from loguru import logger
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import get_sessionmaker, unit_of_work
from app.metrics import CALENDAR_SYNC_ALERTS, CALENDAR_SYNC_FAILURES, CALENDAR_SYNCS
from app.models import (
    LIVE_STATUSES,
    Appointment,
    CalendarBusyBlock,
    CalendarConnection,
    CalendarKind,
    Role,
    Service,
    User,
)
from app.models import service_staff as offers
from app.services.integrations import caldav, caldav_push, egress, ics_busy
from app.services.messaging import outbox
from app.services.scheduling.availability_changes import invalidate_after_commit
from app.services.scheduling.availability_queries import staff_zones
from app.services.scheduling.calendar_lock import lock_calendars
from app.utils import secretbox

SYNC_JOB = "sync_calendar"
LEASE = timedelta(minutes=5)  # longer than a fetch (timeout) and an expansion can take
PASSWORD_PURPOSE = "calendar-password"
MAX_HORIZON_DAYS = 730  # the largest `max_advance_days` a service may have
ALERT_TEMPLATE = "calendar_sync_failing"


class SyncFailed(Exception):
    """Why a sync found no usable calendar; `reason` is the metric's label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    connection_id: uuid.UUID
    ok: bool
    blocks: int = 0
    error: str | None = None
    covered: list[uuid.UUID] = field(default_factory=list)  # live bookings inside the new blocks


def seal_password(connection_id: uuid.UUID, password: str) -> str:
    return secretbox.seal(password, purpose=PASSWORD_PURPOSE, context=str(connection_id))


def open_password(connection: CalendarConnection) -> str | None:
    if connection.password_encrypted is None:
        return None
    return secretbox.open_sealed(connection.password_encrypted, purpose=PASSWORD_PURPOSE, context=str(connection.id))


def _password(connection: CalendarConnection) -> str | None:
    try:
        return open_password(connection)
    except (InvalidTag, ValueError):
        raise SyncFailed(
            "credentials", "the stored password can no longer be opened (SECRET_KEY rotated): set it again"
        ) from None


def next_sync_at(now: datetime) -> datetime:
    return now + timedelta(minutes=get_settings().calendar_sync_minutes)


# --- claiming --------------------------------------------------------------------------------------


def _claimable():
    return (
        CalendarConnection.is_active.is_(True),
        or_(CalendarConnection.claimed_until.is_(None), CalendarConnection.claimed_until < func.now()),
    )


async def claim(connection_id: uuid.UUID) -> CalendarConnection | None:
    """Claim one connection (None: gone, inactive, or another sync holds it)."""
    async with get_sessionmaker()() as session, session.begin():
        return await session.scalar(
            update(CalendarConnection)
            .where(CalendarConnection.id == connection_id, *_claimable())
            .values(claimed_until=func.now() + LEASE, last_attempt_at=func.now())
            .returning(CalendarConnection)
        )


_OWNER_ACTIVE = (
    select(User.id)
    .where(User.id == CalendarConnection.staff_id, User.is_active.is_(True), User.deleted_at.is_(None))
    .exists()
)


async def claim_due(limit: int) -> list[uuid.UUID]:
    """Claim up to `limit` connections whose next sync is due, longest waiting first; those of a
    deactivated staff member wait (their blocks stay) until the account is active again."""
    due = (
        select(CalendarConnection.id)
        .where(CalendarConnection.next_sync_at <= func.now(), _OWNER_ACTIVE, *_claimable())
        .order_by(CalendarConnection.next_sync_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
        .prefix_with("MATERIALIZED")  # chosen once: a rescanned subquery would skip past its own locks
    )
    async with get_sessionmaker()() as session, session.begin():
        rows = await session.scalars(
            update(CalendarConnection)
            .where(CalendarConnection.id.in_(select(due.c.id)))
            .values(claimed_until=func.now() + LEASE, last_attempt_at=func.now())
            .returning(CalendarConnection.id)
        )
        return list(rows)


# --- fetching and expanding ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Owner:
    email: str
    zone: ZoneInfo
    horizon_days: int


async def _owner(session: AsyncSession, staff_id: uuid.UUID) -> _Owner:
    email = await session.scalar(select(User.email).where(User.id == staff_id)) or ""
    zones = await staff_zones(session, [staff_id])
    horizon = await session.scalar(
        select(func.max(Service.max_advance_days))
        .join(offers, offers.c.service_id == Service.id)
        .where(offers.c.staff_id == staff_id, Service.is_active.is_(True))
    )
    return _Owner(email, ZoneInfo(zones.get(staff_id, "UTC")), min(horizon or 0, MAX_HORIZON_DAYS))


def window(now: datetime, horizon_days: int) -> tuple[datetime, datetime]:
    """Now - 1 day .. the horizon plus a day (a slot at the horizon's edge still needs its blocks)."""
    return now - timedelta(days=1), now + timedelta(days=horizon_days + 1)


async def _documents(connection: CalendarConnection, start: datetime, end: datetime) -> list[bytes | str]:
    cap = get_settings().calendar_max_bytes
    try:
        if connection.kind == CalendarKind.caldav.value:
            password = _password(connection)
            response = await caldav.events_between(
                connection.url, connection.username, password, start, end, max_bytes=cap
            )
        else:
            response = await egress.request("GET", connection.url, headers={"Accept": "text/calendar"}, max_bytes=cap)
    except egress.EgressRefused as exc:
        raise SyncFailed("refused", f"refused: {exc}") from None
    except egress.EgressFailed as exc:
        raise SyncFailed("unreachable", f"unreachable: {exc}") from None
    if response.truncated:
        raise SyncFailed("too_large", f"the calendar is larger than {cap} bytes (CALENDAR_MAX_BYTES)")
    if not 200 <= response.status < 300:
        raise SyncFailed("status", f"the server answered HTTP {response.status}")
    if connection.kind == CalendarKind.caldav.value:
        try:
            return list(caldav.calendar_data(response.body))
        except caldav.CalDavError as exc:
            raise SyncFailed("unreadable", str(exc)) from None
    return [response.body]


def _expand(
    documents: list[bytes | str], owner: _Owner, start: datetime, end: datetime
) -> tuple[list[ics_busy.Interval], list[Calendar]]:
    limit = get_settings().calendar_max_events
    try:
        calendars = ics_busy.parse(documents)
        found = ics_busy.busy_intervals(
            calendars, zone=owner.zone, email=owner.email, start=start, end=end, limit=limit
        )
        return found, calendars
    except ics_busy.TooManyEvents as exc:
        raise SyncFailed("too_many_events", f"{exc} (CALENDAR_MAX_EVENTS)") from None
    except ics_busy.CalendarUnreadable as exc:
        raise SyncFailed("unreadable", str(exc)) from None


async def _push(connection: CalendarConnection, calendars: list[Calendar], start: datetime, end: datetime) -> None:
    """Bring c3po's own events in the CalDAV calendar up to date (`caldav_push`)."""
    async with get_sessionmaker()() as session:
        work = await caldav_push.plan(session, connection.staff_id, caldav_push.present(calendars), start, end)
    authorization = egress.basic_auth(connection.username, _password(connection) or "") if connection.username else None
    try:
        written = await caldav_push.apply(connection.url, authorization, work)
    except caldav_push.PushFailed as exc:
        raise SyncFailed("push", f"pushing appointments failed: {exc}") from None
    if written:
        logger.info("calendar {}: {} appointments written, {} removed", connection.id, len(work.put), len(work.delete))


# --- recording -------------------------------------------------------------------------------------


async def _store(connection: CalendarConnection, intervals: list[ics_busy.Interval]) -> Outcome | None:
    """Replace the blocks and record success, under the calendar lock (None: the connection is gone)."""
    async with unit_of_work() as session:
        await lock_calendars(session, connection.staff_id)
        row = await session.get(CalendarConnection, connection.id, with_for_update=True, populate_existing=True)
        if not _unchanged(row, connection):
            await _release(session, row)
            return None
        old = (
            await session.execute(
                delete(CalendarBusyBlock)
                .where(CalendarBusyBlock.connection_id == connection.id)
                .returning(CalendarBusyBlock.starts_at, CalendarBusyBlock.ends_at)
            )
        ).all()
        if intervals:
            await session.execute(
                insert(CalendarBusyBlock),
                [
                    {"connection_id": connection.id, "staff_id": connection.staff_id, "starts_at": lo, "ends_at": hi}
                    for lo, hi in intervals
                ],
            )
        now = datetime.now(UTC)
        await session.execute(
            update(CalendarConnection)
            .where(CalendarConnection.id == connection.id)
            .values(
                last_success_at=func.now(),
                last_error=None,
                consecutive_failures=0,
                alerted_at=None,
                block_count=len(intervals),
                next_sync_at=next_sync_at(now),
                claimed_until=None,
            )
        )
        covered = await _covered(session, connection.id, connection.staff_id)
        changed = [(lo, hi) for lo, hi in old] + intervals
        if changed:
            invalidate_after_commit(session, connection.staff_id, ranges=changed)
    return Outcome(connection.id, True, blocks=len(intervals), covered=covered)


def _unchanged(row: CalendarConnection | None, synced: CalendarConnection) -> bool:
    """Whether what was fetched still stands for the connection: not removed, turned off, or
    pointed elsewhere meanwhile (a PATCH made it due again; the next pass reads the new one)."""
    return (
        row is not None
        and row.is_active
        and (row.url, row.username, row.password_encrypted) == (synced.url, synced.username, synced.password_encrypted)
    )


async def _release(session: AsyncSession, row: CalendarConnection | None) -> None:
    if row is not None:
        row.claimed_until = None
        await session.flush()


async def _covered(session: AsyncSession, connection_id: uuid.UUID, staff_id: uuid.UUID) -> list[uuid.UUID]:
    """Live bookings that overlap the connection's new blocks: they were committed before them (see
    the module's docstring); they stay booked, like those a time off covers."""
    rows = await session.scalars(
        select(Appointment.id)
        .distinct()
        .join(
            CalendarBusyBlock,
            (CalendarBusyBlock.staff_id == Appointment.staff_id)
            & (CalendarBusyBlock.starts_at < Appointment.ends_at)
            & (CalendarBusyBlock.ends_at > Appointment.starts_at),
        )
        .where(
            CalendarBusyBlock.connection_id == connection_id,
            Appointment.staff_id == staff_id,
            Appointment.status.in_(LIVE_STATUSES),
        )
    )
    return list(rows)


async def _record_failure(connection: CalendarConnection, error: SyncFailed) -> Outcome:
    """Keep the blocks, record the error; the threshold-th failure in a row alerts once."""
    message = str(error)[:2000]
    async with unit_of_work() as session:
        row = await session.get(CalendarConnection, connection.id, with_for_update=True, populate_existing=True)
        if not _unchanged(row, connection):
            await _release(session, row)
            return Outcome(connection.id, False, error=message)
        row.last_error = message
        row.consecutive_failures += 1
        row.next_sync_at = next_sync_at(datetime.now(UTC))
        row.claimed_until = None
        if row.consecutive_failures >= get_settings().calendar_alert_failures and row.alerted_at is None:
            row.alerted_at = datetime.now(UTC)
            await _alert(session, row)
            CALENDAR_SYNC_ALERTS.inc()
        blocks = row.block_count
    return Outcome(connection.id, False, blocks=blocks, error=message)


async def _alert(session: AsyncSession, connection: CalendarConnection) -> None:
    """Email the staff member and every active admin (through the outbox, with this transaction)."""
    staff = await session.get(User, connection.staff_id)
    admins = await session.scalars(
        select(User).where(User.role == Role.admin.value, User.is_active.is_(True), User.deleted_at.is_(None))
    )
    recipients = {user.id: user for user in [staff, *admins] if user is not None}
    for user in recipients.values():
        await outbox.queue_email(
            session,
            to=user.email,
            template=ALERT_TEMPLATE,
            locale=user.locale,
            context={
                "full_name": user.full_name,
                "staff_name": staff.full_name if staff else "",
                "calendar_name": connection.name or connection.kind,
                "failures": connection.consecutive_failures,
                "error": connection.last_error or "",
            },
        )


# --- the whole sync --------------------------------------------------------------------------------


async def sync_claimed(connection: CalendarConnection) -> Outcome:
    """Sync a connection this caller has claimed (see the module's docstring)."""
    async with get_sessionmaker()() as session:
        owner = await _owner(session, connection.staff_id)
    start, end = window(datetime.now(UTC), owner.horizon_days)
    try:
        documents = await _documents(connection, start, end)
        intervals, calendars = await asyncio.to_thread(_expand, documents, owner, start, end)
        if connection.push_appointments and connection.kind == CalendarKind.caldav.value:
            await _push(connection, calendars, start, end)
    except SyncFailed as error:
        CALENDAR_SYNCS.labels("failed").inc()
        CALENDAR_SYNC_FAILURES.labels(error.reason).inc()
        logger.warning("calendar {} sync failed: {}", connection.id, error)
        return await _record_failure(connection, error)
    outcome = await _store(connection, intervals)
    if outcome is None:
        return Outcome(connection.id, False, error="the connection was changed or removed during the sync")
    CALENDAR_SYNCS.labels("ok").inc()
    logger.info(
        "calendar {} synced: {} busy blocks, {} bookings inside them",
        connection.id,
        outcome.blocks,
        len(outcome.covered),
    )
    return outcome


async def sync_connection(connection_id: uuid.UUID) -> Outcome | None:
    """Claim and sync one connection now (None: gone, inactive, or being synced elsewhere)."""
    connection = await claim(connection_id)
    if connection is None:
        return None
    return await sync_claimed(connection)


async def sync_due(*, batch: int = 20, at_once: int = 5, budget_seconds: float = 240) -> int:
    """Sync the connections that are due (the worker's cron), `at_once` side by side, batch after
    batch until none is due or the budget (inside the cron's timeout) is spent; returns how many."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_seconds
    gate = asyncio.Semaphore(at_once)
    done = 0
    while loop.time() < deadline and (ids := await claim_due(batch)):
        await asyncio.gather(*(_sync_one(connection_id, gate) for connection_id in ids))
        done += len(ids)
    return done


async def _sync_one(connection_id: uuid.UUID, gate: asyncio.Semaphore) -> None:
    async with gate:
        async with get_sessionmaker()() as session:
            connection = await session.get(CalendarConnection, connection_id)
        if connection is None:
            return
        try:
            await sync_claimed(connection)
        except Exception:  # one broken connection must not starve the others; its claim runs out
            logger.opt(exception=True).error("calendar {} sync crashed", connection_id)
