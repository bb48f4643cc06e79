"""Which availability days a committed change invalidates, and bumping them once it has committed.

- Bookings: `invalidate_after_commit(session, staff_id)` from the booking code bumps the local dates
  of every appointment of that staff member this transaction inserted, loaded or refreshed (so a
  reschedule's old and new ranges both count; buffers are inside `blocked_from/blocked_until`).
  Recorded by ORM events; with nothing recorded, the whole staff version is bumped.
- Time off: `ranges=` (multi-day ones bump every date they cover); overrides: `dates=`;
  weekly hours and zone: `whole=True`.
After the commit the worker is told too (`CALENDAR_CHANGED_JOB`): a freed slot is offered to the waitlist.
Dates are the staff member's local dates, their zones read in the transaction just before it
commits; a range whose zone is unknown bumps the whole staff version (never nothing).
"""

import uuid
from collections.abc import Iterable
from datetime import date, datetime
from functools import partial
from zoneinfo import ZoneInfo

from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, object_session

from app.database import after_commit
from app.models import Appointment
from app.services.messaging.outbox import get_arq_pool
from app.services.scheduling import availability_cache as cache
from app.services.scheduling.availability_queries import ZONES

_SEEN, _PENDING = "availability_ranges", "availability_pending"
CALENDAR_CHANGED_JOB = "calendar_changed"  # the worker's job told which calendars changed
Range = tuple[datetime, datetime]
# staff -> None (every day) or (local dates, UTC ranges still to map to local dates)
Changes = dict[uuid.UUID, tuple[set[date], list[Range]] | None]


def _seen(target: Appointment) -> None:
    values = target.__dict__  # never trigger a load from inside an ORM event
    staff_id, low, high = values.get("staff_id"), values.get("blocked_from"), values.get("blocked_until")
    session = object_session(target)
    if session is not None and staff_id is not None and low is not None and high is not None:
        session.info.setdefault(_SEEN, {}).setdefault(staff_id, set()).add((low, high))


event.listen(Appointment, "load", lambda target, _context: _seen(target))
event.listen(Appointment, "refresh", lambda target, _context, _attrs: _seen(target))
event.listen(Appointment, "after_insert", lambda _mapper, _connection, target: _seen(target))


def invalidate_after_commit(
    session: AsyncSession,
    *staff_ids: uuid.UUID,
    dates: Iterable[date] = (),
    ranges: Iterable[Range] = (),
    whole: bool = False,
    announce: bool = True,
) -> None:
    """Every change that can move a slot calls this; the bump waits for the commit, so no answer
    computed from the old data can be cached under the new versions. Then (unless `announce` is
    False: a change that only takes time) the worker is told, so a slot it freed goes to the waitlist."""
    if not staff_ids:
        return
    if announce:
        after_commit(session, partial(announce_changes, staff_ids))
    dates, ranges = set(dates), list(ranges)
    seen = session.info.get(_SEEN, {})
    changes: Changes = {}
    for staff_id in staff_ids:
        if whole:
            changes[staff_id] = None
        elif dates or ranges:
            changes[staff_id] = (set(dates), list(ranges))
        else:
            recorded = seen.pop(staff_id, None)
            changes[staff_id] = (set(), list(recorded)) if recorded else None
    session.info.setdefault(_PENDING, []).append(changes)
    after_commit(session, partial(_bump, changes))


async def announce_changes(staff_ids: Iterable[uuid.UUID]) -> None:
    """Queue `CALENDAR_CHANGED_JOB` for these staff members (the waitlist's scan, `booking.waitlist`).
    Best effort: the worker's cron scans the whole waitlist every minute anyway."""
    try:
        pool = await get_arq_pool()
        await pool.enqueue_job(CALENDAR_CHANGED_JOB, sorted(str(staff_id) for staff_id in staff_ids))
    except (RedisError, OSError) as exc:
        logger.warning("could not announce a calendar change to the worker: {}", exc)


@event.listens_for(Session, "before_commit")
def _to_local_dates(session: Session) -> None:
    """Just before the commit, in its transaction: turn ranges into the staff members' local dates
    (one query for every zone needed)."""
    if session.in_nested_transaction():
        return  # a SAVEPOINT being released
    pending: list[Changes] = session.info.pop(_PENDING, [])
    zoned = {staff_id for changes in pending for staff_id, change in changes.items() if change and change[1]}
    if not zoned:
        return
    zones = {staff_id: zone for staff_id, zone in session.execute(ZONES, {"ids": list(zoned)})}
    for changes in pending:
        for staff_id, change in changes.items():
            if change and change[1] and staff_id in zones:
                change[0].update(cache.touched_dates(change[1], ZoneInfo(zones[staff_id])))
                change[1].clear()


async def _bump(changes: Changes) -> None:
    # Ranges still unmapped (their staff member is gone, say) fall back to the whole staff version.
    await cache.bump({s: None if change is None or change[1] else change[0] for s, change in changes.items()})


async def bump_versions(*staff_ids: uuid.UUID) -> None:
    """Invalidate every cached day of these staff members now."""
    await cache.bump(dict.fromkeys(staff_ids))
