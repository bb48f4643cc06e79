"""Reminders before an appointment: one row per (appointment, offset), sent by a worker cron.

`schedule` writes the rows with the appointment and rewrites them when it moves; `cancel` drops them.
Every minute the worker's `send_due_reminders` claims due rows (`FOR UPDATE SKIP LOCKED`, a batch per
transaction), checks the appointment again, and queues the email through the outbox in the same
transaction that marks the row sent: however many workers run, a reminder leaves once, and a worker
that was down catches up on its return.

A row that will never be sent (appointment cancelled, moved or started, or a closer reminder of the
same appointment is due as well) is deleted, so the due index holds only work still to do.
"""

from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit, unit_of_work
from app.metrics import REMINDER_DELAY
from app.models import LIVE_STATUSES, Appointment, Reminder, Service, User
from app.services.messaging.notifications import format_when, rooms_of
from app.services.messaging.outbox import queue_email
from app.utils.manage_tokens import manage_url
from app.utils.time import utcnow

TEMPLATE = "reminder"
BATCH = 50


def offsets() -> list[int]:
    """Minutes before the start, largest first (settings `reminder_offsets`, env `REMINDER_OFFSETS`)."""
    return sorted({minutes for minutes in get_settings().reminder_offsets if minutes > 0}, reverse=True)


async def schedule(
    session: AsyncSession, appointment: Appointment, *, now: datetime | None = None, new: bool = False
) -> None:
    """(Re)create the reminder rows of a live appointment for its current start time.

    Unsent rows of an earlier start are replaced; offsets whose time has already passed are skipped.
    A row already sent for this very start is kept (calling this again never sends a reminder twice);
    one sent for an earlier start is deleted, so it does not block the new time's reminder under the
    unique (appointment, offset) index. `new`: the appointment was inserted in this transaction, so
    it has no rows yet (nothing to read, and the rows are flushed with the transaction's others).
    """
    if appointment.status not in LIVE_STATUSES:
        await cancel(session, appointment)
        return
    now = now or utcnow()
    if new:
        session.add_all(
            Reminder(appointment_id=appointment.id, offset_minutes=minutes, due_at=due_at)
            for minutes, due_at in due_times(appointment.starts_at, now).items()
        )
        return
    wanted = {minutes: appointment.starts_at - timedelta(minutes=minutes) for minutes in offsets()}
    # Locked: a worker sending one of these right now finishes first, and we see what it did.
    existing = await session.scalars(
        select(Reminder).where(Reminder.appointment_id == appointment.id).with_for_update()
    )
    kept: set[int] = set()
    stale: list[int] = []
    for row in existing:
        if row.sent_at is not None and wanted.get(row.offset_minutes) == row.due_at:
            kept.add(row.offset_minutes)
        else:
            stale.append(row.id)
    if stale:
        await session.execute(delete(Reminder).where(Reminder.id.in_(stale)))
    session.add_all(
        Reminder(appointment_id=appointment.id, offset_minutes=minutes, due_at=due_at)
        for minutes, due_at in wanted.items()
        if minutes not in kept and due_at > now
    )
    await session.flush()


def due_times(starts_at: datetime, now: datetime) -> dict[int, datetime]:
    """The reminders a new appointment gets: offset (minutes) -> when, for the times still ahead."""
    wanted = {minutes: starts_at - timedelta(minutes=minutes) for minutes in offsets()}
    return {minutes: due_at for minutes, due_at in wanted.items() if due_at > now}


async def cancel(session: AsyncSession, appointment: Appointment) -> None:
    """Drop the unsent reminders of an appointment that is no longer live."""
    await session.execute(delete(Reminder).where(Reminder.appointment_id == appointment.id, Reminder.sent_at.is_(None)))


async def send_due_reminders(ctx: dict[str, Any]) -> int:
    """The arq cron job, every minute and at worker start: queue every due reminder."""
    queued = await send_due()
    if queued:
        logger.info("queued {} reminder emails", queued)
    return queued


async def send_due(now: datetime | None = None) -> int:
    """Queue the emails of all reminders due by `now` (default: the current time); how many were queued.

    One transaction per batch of `BATCH` rows. A row whose appointment is locked (being moved or
    cancelled at this moment) is left for the next run.
    """
    queued = 0
    deferred: set[int] = set()
    while True:
        async with unit_of_work() as session:
            at = now or utcnow()
            claimed = await _claim(session, at, deferred)
            for reminder in claimed:
                outcome = await _handle(session, reminder, at)
                if outcome is None:
                    deferred.add(reminder.id)
                queued += bool(outcome)
        if len(claimed) < BATCH:
            return queued


async def _claim(session: AsyncSession, now: datetime, deferred: set[int]) -> list[Reminder]:
    query = (
        select(Reminder)
        .where(Reminder.sent_at.is_(None), Reminder.due_at <= now)
        .order_by(Reminder.due_at, Reminder.id)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    )
    if deferred:
        query = query.where(Reminder.id.not_in(deferred))
    return list((await session.scalars(query)).all())


async def _handle(session: AsyncSession, reminder: Reminder, now: datetime) -> bool | None:
    """True: queued and marked sent. False: will never be sent, deleted. None: try again later."""
    # FOR SHARE: a move or cancellation waits until we commit; one already under way (the row is
    # locked) makes us skip it, never wait, so the two cannot deadlock over the reminder rows.
    appointment = await session.scalar(
        select(Appointment)
        .where(Appointment.id == reminder.appointment_id)
        .with_for_update(read=True, skip_locked=True)
    )
    if appointment is None:
        return None
    reason = await _skip_reason(session, reminder, appointment, now)
    client = await session.get(User, appointment.client_id)
    if reason is None and (client is None or not client.is_active or client.deleted_at is not None):
        reason = "client account closed"
    if reason is not None:
        logger.debug("reminder {} dropped: {}", reminder.id, reason)
        await session.delete(reminder)
        return False
    assert client is not None
    await queue_email(
        session,
        to=client.email,
        template=TEMPLATE,
        locale=client.locale,
        context=await _context(session, appointment, client),
        secret_keys=("link",),  # a manage link: a credential, blanked once sent
    )
    reminder.sent_at = now
    delay = max((now - reminder.due_at).total_seconds(), 0.0)

    async def observe() -> None:  # c3po_reminder_delay_seconds, once the email is really queued
        REMINDER_DELAY.observe(delay)

    after_commit(session, observe)
    return True


async def _skip_reason(
    session: AsyncSession, reminder: Reminder, appointment: Appointment, now: datetime
) -> str | None:
    if appointment.status not in LIVE_STATUSES:
        return f"appointment {appointment.status}"
    if appointment.starts_at <= now:
        return "appointment already started"
    if appointment.starts_at - timedelta(minutes=reminder.offset_minutes) != reminder.due_at:
        return "appointment moved"
    closer = await session.scalar(
        select(Reminder.id)
        .where(
            Reminder.appointment_id == appointment.id,
            Reminder.offset_minutes < reminder.offset_minutes,
            Reminder.due_at <= now,
        )
        .limit(1)
    )
    if closer is not None:  # after downtime: one reminder, the closest, rather than several at once
        return "a closer reminder is due"
    return None


async def _context(session: AsyncSession, appointment: Appointment, client: User) -> dict[str, Any]:
    service = await session.get(Service, appointment.service_id)
    staff = await session.get(User, appointment.staff_id)
    return {
        "recipient_name": client.full_name,
        "service_name": service.name if service else "",
        "staff_name": staff.full_name if staff else "",
        "when": format_when(appointment.starts_at, appointment.ends_at, client.timezone, client.locale),
        "notes": appointment.notes or "",
        "where": (await rooms_of(session, [appointment])).get(appointment.id, ""),
        "link": manage_url(appointment.id, appointment.client_id, appointment.ends_at),
    }
