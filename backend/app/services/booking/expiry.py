"""Pending appointments expire: a booking that needs confirmation and is still `pending`
`PENDING_EXPIRY_HOURS` after it was made, or once its start has come if that is sooner, is
cancelled by the worker (a cron every minute), which frees its slot.

Each expiry is an ordinary cancellation (`cancellation.cancel_with_emails`, no actor: the system
did it): audited, its reminders dropped, the availability cache invalidated, events and the
`appointment.cancelled` webhook sent, and both parties emailed with the reason
`NOT_CONFIRMED_IN_TIME` (the occurrences of a series in one email). One short transaction per
appointment (or series), under its staff member's calendar
lock (shared, taken first as everywhere else) and the row's lock (`SKIP LOCKED`): of two sweeps,
one takes it and the other passes it by; a confirm racing the sweep either commits first (the
row is no longer pending) or waits and then finds it cancelled — exactly one of them wins.
"""

import uuid
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit, unit_of_work
from app.metrics import PENDING_EXPIRED
from app.models import Appointment, AppointmentStatus
from app.services.booking.cancellation import cancel_with_emails
from app.services.messaging.notifications import NOT_CONFIRMED_IN_TIME
from app.services.scheduling.calendar_lock import lock_calendars
from app.utils.time import utcnow

BATCH = 100  # expiries per run at most; the rest wait a minute


def _expired(now: datetime) -> Any:
    """Pending, and made more than `PENDING_EXPIRY_HOURS` ago or already started."""
    made_before = now - timedelta(hours=get_settings().pending_expiry_hours)
    return (Appointment.status == AppointmentStatus.pending.value) & or_(
        Appointment.created_at <= made_before, Appointment.starts_at <= now
    )


async def expire_pending(now: datetime | None = None, *, batch: int = BATCH) -> int:
    """Cancel up to `batch` expired pending appointments; how many this run cancelled.

    The occurrences of one series expire together, with one email to each side for them all. An
    appointment another run holds (or that fails) is left for the next run, never waited on."""
    now = now or utcnow()
    async with unit_of_work() as session:
        query = select(Appointment.id, Appointment.staff_id, Appointment.series_id).where(_expired(now))
        due = (await session.execute(query.order_by(Appointment.created_at, Appointment.id).limit(batch))).all()
    groups: dict[tuple[uuid.UUID, uuid.UUID], list[uuid.UUID]] = {}
    for appointment_id, staff_id, series_id in due:
        groups.setdefault((staff_id, series_id or appointment_id), []).append(appointment_id)
    expired = 0
    for (staff_id, _), ids in groups.items():
        try:
            async with unit_of_work() as session:
                expired += await _expire(session, staff_id, ids, now)
        except Exception:  # one bad row must not hold up the others
            logger.opt(exception=True).error("could not expire pending appointments {}", ids)
    return expired


async def _expire(session: AsyncSession, staff_id: uuid.UUID, ids: list[uuid.UUID], now: datetime) -> int:
    """Cancel those of `ids` (one staff member's, one series or a single booking) still expired and not held."""
    await lock_calendars(session, staff_id, shared=True)
    query = select(Appointment).where(Appointment.id.in_(ids), _expired(now)).order_by(Appointment.starts_at)
    appointments = list(await session.scalars(query.with_for_update(skip_locked=True)))
    if not appointments:  # confirmed or cancelled meanwhile, or another run has them
        return 0
    await cancel_with_emails(session, None, appointments, NOT_CONFIRMED_IN_TIME, one_email=True)
    after_commit(session, _counter(len(appointments)))
    logger.info("{} pending appointments expired unconfirmed: {}", len(appointments), [a.id for a in appointments])
    return len(appointments)


def _counter(expired: int):
    async def count() -> None:
        PENDING_EXPIRED.inc(expired)

    return count


async def expire_pending_appointments(ctx: dict[str, Any]) -> int:
    """The arq cron job, every minute and at worker start."""
    return await expire_pending()
