"""Pending appointments expire: a booking that needs confirmation and is still `pending`
`PENDING_EXPIRY_HOURS` after it was made, or once its start has come if that is sooner, is
cancelled by the worker (a cron every minute), which frees its slot.

Each expiry is an ordinary cancellation (`cancellation.cancel_with_emails`, no actor: the system
did it): audited, its reminders dropped, the availability cache invalidated, events and the
`appointment.cancelled` webhook sent, and both parties emailed with the reason
`NOT_CONFIRMED_IN_TIME`. One short transaction per appointment, under its staff member's calendar
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

    An appointment another run holds (or that fails) is left for the next run, never waited on."""
    now = now or utcnow()
    async with unit_of_work() as session:
        query = select(Appointment.id, Appointment.staff_id).where(_expired(now))
        due = (await session.execute(query.order_by(Appointment.created_at, Appointment.id).limit(batch))).all()
    expired = 0
    for appointment_id, staff_id in due:
        try:
            async with unit_of_work() as session:
                expired += await _expire_one(session, appointment_id, staff_id, now)
        except Exception:  # one bad row must not hold up the others
            logger.opt(exception=True).error("could not expire pending appointment {}", appointment_id)
    return expired


async def _expire_one(session: AsyncSession, appointment_id: uuid.UUID, staff_id: uuid.UUID, now: datetime) -> bool:
    await lock_calendars(session, staff_id, shared=True)
    appointment = await session.scalar(
        select(Appointment).where(Appointment.id == appointment_id, _expired(now)).with_for_update(skip_locked=True)
    )
    if appointment is None:  # confirmed or cancelled meanwhile, or another run has it
        return False
    await cancel_with_emails(session, None, [appointment], NOT_CONFIRMED_IN_TIME)
    after_commit(session, _count)
    logger.info("pending appointment {} expired unconfirmed", appointment_id)
    return True


async def _count() -> None:
    PENDING_EXPIRED.inc()


async def expire_pending_appointments(ctx: dict[str, Any]) -> int:
    """The arq cron job, every minute and at worker start."""
    return await expire_pending()
