"""Reminders before an appointment: one row per (appointment, offset), sent by a worker cron.
INTERFACE — implemented by the reminders work (issue 3 §5)."""

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Appointment


async def schedule(session: AsyncSession, appointment: Appointment) -> None:
    """(Re)create the reminder rows of a live appointment for its current start time.

    Unsent rows of an earlier start are replaced; offsets whose time has already passed are skipped.
    """
    raise NotImplementedError


async def cancel(session: AsyncSession, appointment: Appointment) -> None:
    """Drop the unsent reminders of an appointment that is no longer live."""
    raise NotImplementedError
