"""One lock per staff member's calendar, held until the transaction ends.

Everything that writes a calendar or decides from it takes it first. Booking, reschedule, series
and the staff member's appointment transitions share it; time off, overrides, weekly hours, and
demoting or deactivating them (or a service's providers) take it alone. So a time off's answer
lists every booking it covers, a booking re-reads hours written a moment ago, and a demotion and
that staff member's confirm cannot both go through.

A transaction-scoped advisory lock rather than a row lock: it needs no row (staff profiles are
created lazily; a demotion may concern someone without one), it does not collide with the row locks
that foreign keys and profile edits take, and it is released by commit or rollback, never leaked.
Reads after taking it see everything the previous holder committed (READ COMMITTED takes a fresh
snapshot per statement), but objects loaded earlier in the session must be refreshed.

Lock order, for every transaction that takes more than one kind: the client's lock (booking
limits), then staff calendars, then group session seats (`booking.seats`: a seat number's lock,
one per session, sessions in key order), then resources; within one kind, in key order. The booking
hot path takes only a calendar lock, and only for a booking that needs no other (`booking.paths`).
"""

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

# The first key of the two-key form, naming this use of advisory locks ("cal\0").
CALENDAR_LOCK_CLASS = int.from_bytes(b"cal\0", signed=True)


def calendar_lock_key(staff_id: uuid.UUID) -> int:
    """The second key: 32 bits of the id (a collision only makes two calendars wait for each other)."""
    return int.from_bytes(staff_id.bytes[-4:], signed=True)


async def lock_calendars(session: AsyncSession, *staff_ids: uuid.UUID, shared: bool = False) -> None:
    """Wait for, then hold until commit, the calendar lock of each staff member (in key order, so two
    requests locking several calendars cannot deadlock).

    `shared` for changes to single appointments (booking, reschedule, transitions): they exclude
    calendar changes but not each other — the exclusion constraint and the compare-and-swap on
    `sequence` already settle races among them, and a popular slot wanted by hundreds at once must
    not queue them one by one. Calendar changes (hours, overrides, time off, demotion) take it
    exclusively."""
    lock = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
    for key in sorted({calendar_lock_key(staff_id) for staff_id in staff_ids}):
        await session.execute(select(lock(CALENDAR_LOCK_CLASS, key)))
