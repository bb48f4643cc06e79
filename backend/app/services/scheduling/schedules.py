"""A staff member's calendar: weekly hours in their own time zone, date overrides and time off.

Staff manage their own, admins anyone's. Every change is audited (entity "schedule", id = the staff
member) and bumps the staff member's availability version once committed.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import AppError, Forbidden, NotFound
from app.models import (
    Appointment,
    CalendarConnection,
    DateOverride,
    Role,
    StaffProfile,
    TimeOff,
    User,
    WeeklyInterval,
)
from app.schemas.staff import Interval, OverrideIn, Schedule, TimeOffIn
from app.services import audit
from app.services.pagination import paginate
from app.services.scheduling import conflicts
from app.services.scheduling.availability import invalidate_after_commit
from app.services.scheduling.calendar_lock import lock_calendars
from app.services.scheduling.catalogue import active_staff_filter

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class InvalidInterval(AppError):
    status, code, title = 422, "invalid_interval", "An interval must end after it starts"


class OverlappingIntervals(AppError):
    status, code, title = 422, "overlapping_intervals", "Intervals overlap"


async def get_staff_member(session: AsyncSession, staff_id: uuid.UUID) -> User:
    staff = await session.scalar(select(User).where(User.id == staff_id, *active_staff_filter()))
    if staff is None:
        raise NotFound("No such staff member")
    return staff


async def managed_staff(session: AsyncSession, actor: User, staff_id: uuid.UUID) -> User:
    """The staff member whose calendar `actor` wants to see or change: themself, or anyone for an admin."""
    staff = await get_staff_member(session, staff_id)
    if actor.role != Role.admin.value and actor.id != staff.id:
        raise Forbidden("Only this staff member or an admin may manage this calendar")
    return staff


def check_intervals(intervals: Iterable[tuple[str, time, time]]) -> None:
    """Each interval ends after it starts; intervals of one day (the label) do not overlap. Touching is fine."""
    by_day: dict[str, list[tuple[time, time]]] = defaultdict(list)
    for label, start, end in intervals:
        if end <= start:
            raise InvalidInterval(f"{label} {start:%H:%M}–{end:%H:%M} does not end after it starts")
        by_day[label].append((start, end))
    for label, spans in by_day.items():
        spans.sort()
        for (start_a, end_a), (start_b, end_b) in zip(spans, spans[1:], strict=False):
            if start_b < end_a:
                raise OverlappingIntervals(
                    f"{label} {start_a:%H:%M}–{end_a:%H:%M} overlaps {start_b:%H:%M}–{end_b:%H:%M}"
                )


def _wall(value: time) -> str:
    return value.strftime("%H:%M")


def _plain_intervals(intervals: Iterable[Interval]) -> list[dict[str, str]]:
    return [{"start": _wall(i.start), "end": _wall(i.end)} for i in sorted(intervals, key=lambda i: (i.start, i.end))]


async def _locked_profile(session: AsyncSession, staff: User) -> StaffProfile:
    """The staff member's profile, created on first use, with their calendar locked (see `calendar_lock`)."""
    await lock_calendars(session, staff.id)
    await session.execute(
        insert(StaffProfile).values(user_id=staff.id, timezone=staff.timezone, bio="").on_conflict_do_nothing()
    )
    profile = await session.scalar(
        select(StaffProfile).where(StaffProfile.user_id == staff.id).execution_options(populate_existing=True)
    )
    assert profile is not None
    return profile


async def _changed(
    session: AsyncSession, actor: User, staff: User, action: str, before: Any, after: Any, **touched: Any
) -> None:
    """Audit a calendar change and have availability recomputed once it is committed: the days
    `touched` names (`dates=`, `ranges=`), or every day (`whole=True`)."""
    entity = {"entity_type": "schedule", "entity_id": staff.id}
    await audit.record(session, actor_id=actor.id, action=action, before=before, after=after, **entity)
    invalidate_after_commit(session, staff.id, **touched)


# --- weekly hours --------------------------------------------------------------------------------


async def _schedule(session: AsyncSession, staff: User) -> dict[str, Any]:
    timezone = await session.scalar(select(StaffProfile.timezone).where(StaffProfile.user_id == staff.id))
    rows = await session.execute(
        select(WeeklyInterval.weekday, WeeklyInterval.start_time, WeeklyInterval.end_time)
        .where(WeeklyInterval.staff_id == staff.id)
        .order_by(WeeklyInterval.weekday, WeeklyInterval.start_time)
    )
    return {
        "timezone": timezone or staff.timezone,
        "intervals": [{"weekday": d, "start": _wall(s), "end": _wall(e)} for d, s, e in rows],
    }


async def get_schedule(session: AsyncSession, actor: User, staff_id: uuid.UUID) -> dict[str, Any]:
    return await _schedule(session, await managed_staff(session, actor, staff_id))


async def replace_schedule(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, schedule: Schedule
) -> tuple[dict[str, Any], list[Appointment]]:
    """Replace the whole week (and the zone its hours are written in); answers it and the live
    bookings now outside the hours (they stay booked)."""
    staff = await managed_staff(session, actor, staff_id)
    check_intervals((WEEKDAYS[i.weekday], i.start, i.end) for i in schedule.intervals)
    profile = await _locked_profile(session, staff)
    before = await _schedule(session, staff)
    await session.execute(delete(WeeklyInterval).where(WeeklyInterval.staff_id == staff.id))
    session.add_all(
        WeeklyInterval(staff_id=staff.id, weekday=i.weekday, start_time=i.start, end_time=i.end)
        for i in schedule.intervals
    )
    if profile.timezone != schedule.timezone:
        # All-day and floating events of external calendars are read in this zone: read them again now.
        await session.execute(
            update(CalendarConnection).where(CalendarConnection.staff_id == staff.id).values(next_sync_at=func.now())
        )
    profile.timezone = schedule.timezone
    await session.flush()
    after = await _schedule(session, staff)
    await _changed(session, actor, staff, "schedule.replace", before, after, whole=True)
    return after, await conflicts.outside_hours(session, staff.id)


# --- date overrides ------------------------------------------------------------------------------


def _override_view(row: DateOverride) -> dict[str, Any]:
    return {"id": row.id, "date": row.date, "intervals": row.intervals}


async def list_overrides(
    session: AsyncSession,
    actor: User,
    staff_id: uuid.UUID,
    *,
    first: date | None,
    last: date | None,
    limit: int,
    offset: int,
) -> tuple[list[DateOverride], int]:
    staff = await managed_staff(session, actor, staff_id)
    query = select(DateOverride).where(DateOverride.staff_id == staff.id)
    if first is not None:
        query = query.where(DateOverride.date >= first)
    if last is not None:
        query = query.where(DateOverride.date <= last)
    return await paginate(session, query, DateOverride.date, limit=limit, offset=offset)


async def set_override(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, override: OverrideIn
) -> tuple[DateOverride, bool, list[Appointment]]:
    """Create or replace the hours of one local date; answers the row, whether it is new, and the
    live bookings of that date now outside its hours."""
    staff = await managed_staff(session, actor, staff_id)
    label = override.date.isoformat()
    check_intervals((label, i.start, i.end) for i in override.intervals)
    zone = ZoneInfo((await _locked_profile(session, staff)).timezone)
    intervals = _plain_intervals(override.intervals)
    existing = await session.scalar(
        select(DateOverride).where(DateOverride.staff_id == staff.id, DateOverride.date == override.date)
    )
    before = _override_view(existing) if existing else None
    upsert = (
        insert(DateOverride)
        .values(id=uuid.uuid4(), staff_id=staff.id, date=override.date, intervals=intervals)
        .on_conflict_do_update(index_elements=["staff_id", "date"], set_={"intervals": intervals})
        .returning(DateOverride.id, literal_column("xmax = 0"))
    )
    row_id, created = (await session.execute(upsert)).one()
    row = await session.scalar(
        select(DateOverride).where(DateOverride.id == row_id).execution_options(populate_existing=True)
    )
    assert row is not None
    action = "override.create" if created else "override.replace"
    await _changed(session, actor, staff, action, before, _override_view(row), dates=[row.date])
    day_start = datetime.combine(override.date, time(0), tzinfo=zone)
    day_end = datetime.combine(override.date + timedelta(days=1), time(0), tzinfo=zone)
    return row, bool(created), await conflicts.outside_hours(session, staff.id, day_start, day_end)


async def delete_override(session: AsyncSession, actor: User, staff_id: uuid.UUID, override_id: uuid.UUID) -> None:
    staff = await managed_staff(session, actor, staff_id)
    await lock_calendars(session, staff.id)
    row = await session.scalar(
        select(DateOverride).where(DateOverride.id == override_id, DateOverride.staff_id == staff.id)
    )
    if row is None:
        raise NotFound("No such override")
    before, day = _override_view(row), row.date
    await session.delete(row)
    await session.flush()
    await _changed(session, actor, staff, "override.delete", before, None, dates=[day])


# --- time off ------------------------------------------------------------------------------------


async def list_time_off(
    session: AsyncSession,
    actor: User,
    staff_id: uuid.UUID,
    *,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[TimeOff], int]:
    """Blocks that overlap [start, end), earliest first."""
    staff = await managed_staff(session, actor, staff_id)
    query = select(TimeOff).where(TimeOff.staff_id == staff.id)
    if start is not None:
        query = query.where(TimeOff.ends_at > start)
    if end is not None:
        query = query.where(TimeOff.starts_at < end)
    return await paginate(session, query, TimeOff.starts_at, TimeOff.id, limit=limit, offset=offset)


async def create_time_off(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, block: TimeOffIn
) -> tuple[TimeOff, list[Appointment]]:
    """Block time; bookings it covers stay as they are and are listed so someone can move or cancel them."""
    staff = await managed_staff(session, actor, staff_id)
    starts_at, ends_at = block.starts_at.astimezone(UTC), block.ends_at.astimezone(UTC)
    if ends_at <= starts_at:
        raise InvalidInterval("ends_at must be after starts_at")
    await lock_calendars(session, staff.id)
    row = TimeOff(staff_id=staff.id, starts_at=starts_at, ends_at=ends_at, reason=block.reason)
    session.add(row)
    await session.flush()
    await session.refresh(row, ["created_at"])
    covered = await conflicts.covered_by(session, staff.id, starts_at, ends_at)
    await _changed(session, actor, staff, "time_off.create", None, audit.snapshot(row), ranges=[(starts_at, ends_at)])
    return row, covered


async def delete_time_off(session: AsyncSession, actor: User, staff_id: uuid.UUID, time_off_id: uuid.UUID) -> None:
    staff = await managed_staff(session, actor, staff_id)
    await lock_calendars(session, staff.id)
    row = await session.scalar(select(TimeOff).where(TimeOff.id == time_off_id, TimeOff.staff_id == staff.id))
    if row is None:
        raise NotFound("No such time off")
    before, blocked = audit.snapshot(row), (row.starts_at, row.ends_at)
    await session.delete(row)
    await session.flush()
    await _changed(session, actor, staff, "time_off.delete", before, None, ranges=[blocked])
