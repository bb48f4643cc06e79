"""One lock per staff member's calendar, held until the transaction ends.

Everything that writes a calendar or decides from it takes it first: booking, reschedule, series,
time off, overrides, weekly hours, the staff member's appointment transitions, and demoting or
deactivating them. So a time off's answer lists every booking it covers, a booking re-reads hours
written a moment ago, and a demotion and that staff member's confirm cannot both go through.

A transaction-scoped advisory lock rather than a row lock: it needs no row (staff profiles are
created lazily; a demotion may concern someone without one), it does not collide with the row locks
that foreign keys and profile edits take, and it is released by commit or rollback, never leaked.
Reads after taking it see everything the previous holder committed (READ COMMITTED takes a fresh
snapshot per statement), but objects loaded earlier in the session must be refreshed.
"""

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

# The first key of the two-key form, naming this use of advisory locks ("cal\0").
CALENDAR_LOCK_CLASS = int.from_bytes(b"cal\0", signed=True)


def calendar_lock_key(staff_id: uuid.UUID) -> int:
    """The second key: 32 bits of the id (a collision only makes two calendars wait for each other)."""
    return int.from_bytes(staff_id.bytes[-4:], signed=True)


async def lock_calendars(session: AsyncSession, *staff_ids: uuid.UUID) -> None:
    """Wait for, then hold until commit, the calendar lock of each staff member (in key order, so two
    requests locking several calendars cannot deadlock)."""
    for key in sorted({calendar_lock_key(staff_id) for staff_id in staff_ids}):
        await session.execute(select(func.pg_advisory_xact_lock(CALENDAR_LOCK_CLASS, key)))
