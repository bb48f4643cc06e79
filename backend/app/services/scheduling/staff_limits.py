"""A staff member's booking limit: at most so many appointments per local day (`booking.limits` counts it).

That staff member or an admin sets it; it holds from the next booking on (existing ones stay).
"""

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import StaffProfile, User
from app.services import audit
from app.services.scheduling.schedules import managed_staff


async def _limits(session: AsyncSession, staff: User) -> dict[str, Any]:
    limit = await session.scalar(select(StaffProfile.max_appointments_per_day).where(StaffProfile.user_id == staff.id))
    return {"max_appointments_per_day": limit}


async def get_limits(session: AsyncSession, actor: User, staff_id: uuid.UUID) -> dict[str, Any]:
    return await _limits(session, await managed_staff(session, actor, staff_id))


async def replace_limits(session: AsyncSession, actor: User, staff_id: uuid.UUID, data: Any) -> dict[str, Any]:
    """Set (or, with null, lift) the daily limit; the profile is created on first use."""
    staff = await managed_staff(session, actor, staff_id)
    before = await _limits(session, staff)
    values = {"max_appointments_per_day": data.max_appointments_per_day}
    await session.execute(
        insert(StaffProfile)
        .values(user_id=staff.id, timezone=staff.timezone, bio="", **values)
        .on_conflict_do_update(index_elements=[StaffProfile.user_id], set_=values)
    )
    after = await _limits(session, staff)
    if after != before:
        await audit.record(
            session,
            actor_id=actor.id,
            action="staff.limits",
            entity_type="schedule",
            entity_id=staff.id,
            before=before,
            after=after,
        )
    return after
