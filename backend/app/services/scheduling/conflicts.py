"""Live bookings that a calendar change leaves in an awkward place: inside new time off, or outside
new working hours. They stay booked (nobody is cancelled behind their back) and are listed in the
change's answer, so whoever made it can move or cancel them. Callers hold the calendar lock, so no
booking can slip in between the change and this list."""

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LIVE_STATUSES, Appointment
from app.services.scheduling.availability_engine import within_hours
from app.services.scheduling.availability_queries import load_calendars
from app.utils.time import utcnow


def _live(staff_id: uuid.UUID, start: datetime, end: datetime | None):
    query = select(Appointment).where(
        Appointment.staff_id == staff_id, Appointment.status.in_(LIVE_STATUSES), Appointment.ends_at > start
    )
    if end is not None:
        query = query.where(Appointment.starts_at < end)
    return query.order_by(Appointment.starts_at, Appointment.id)


async def covered_by(session: AsyncSession, staff_id: uuid.UUID, start: datetime, end: datetime) -> list[Appointment]:
    """Live bookings overlapping [start, end) (a time-off block)."""
    return list(await session.scalars(_live(staff_id, start, end)))


async def outside_hours(
    session: AsyncSession, staff_id: uuid.UUID, start: datetime | None = None, end: datetime | None = None
) -> list[Appointment]:
    """Live bookings not yet over (within [start, end) if given) that do not lie inside the staff
    member's working hours as they are now in this transaction."""
    start = max(start or utcnow(), utcnow())
    live = list(await session.scalars(_live(staff_id, start, end)))
    if not live:
        return []
    (calendar,) = await load_calendars(
        session, [staff_id], live[0].starts_at, max(a.ends_at for a in live), margin=timedelta(0)
    )
    return [a for a in live if not within_hours(calendar, a.starts_at, a.ends_at)]
