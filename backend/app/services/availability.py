"""Availability: load calendars in a handful of indexed queries, compute, cache by per-staff version.

Caching never serves a slot that was just taken: every change that can move a slot bumps the
staff member's version once its transaction has committed (`invalidate_after_commit`), and an
answer is cached under the versions read *before* its data was loaded. An answer computed from
data older than a change is therefore filed under a version that no longer exists.
"""

import contextlib
import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy import BigInteger, cast, func, literal, select, text, union_all
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.errors import AppError, NotFound
from app.models import (
    Appointment,
    DateOverride,
    Role,
    Service,
    StaffProfile,
    TimeOff,
    User,
    WeeklyInterval,
    service_staff,
)
from app.redis import get_redis
from app.schemas.availability import render
from app.services.availability_engine import ServiceRules, Slot, StaffCalendar, free_slots, staff_slots
from app.utils.time import timestamp, utcnow

MAX_WINDOW = timedelta(days=62)
CACHE_SECONDS = 30
_FORMAT = 1  # bump when the cached text changes shape
_SECOND = timedelta(seconds=1)

# A literal, not bound parameters, so the planner can use the exclusion constraint's partial GiST index.
_LIVE = text("appointments.status IN ('pending', 'confirmed')")


class WindowTooLarge(AppError):
    status, code, title = 422, "window_too_large", "The time window is too large"


class InvalidWindow(AppError):
    status, code, title = 422, "invalid_window", "The time window is not valid"


def rules_for(service: Service) -> ServiceRules:
    step = get_settings().slot_step_minutes
    return ServiceRules(
        duration=timedelta(minutes=service.duration_minutes),
        buffer_before=timedelta(minutes=service.buffer_before_minutes),
        buffer_after=timedelta(minutes=service.buffer_after_minutes),
        min_notice=timedelta(minutes=service.min_notice_minutes),
        max_advance=timedelta(days=service.max_advance_days),
        step=timedelta(minutes=step) if step else None,
    )


def _margin(rules: ServiceRules) -> timedelta:
    """How far around a window a booking or time off can still touch a slot starting in it."""
    return rules.duration + rules.buffer_before + rules.buffer_after


def _parse_intervals(raw: list[dict[str, str]]) -> list[tuple[time, time]]:
    return [(time.fromisoformat(item["start"]), time.fromisoformat(item["end"])) for item in raw]


async def offering_staff(
    session: AsyncSession, service_id: uuid.UUID, staff_id: uuid.UUID | None = None
) -> dict[uuid.UUID, str]:
    """Active staff members offering the service (or just `staff_id`, if they do): id -> IANA zone."""
    query = (
        select(User.id, func.coalesce(StaffProfile.timezone, User.timezone))
        .join(service_staff, service_staff.c.staff_id == User.id)
        .outerjoin(StaffProfile, StaffProfile.user_id == User.id)
        .where(
            service_staff.c.service_id == service_id,
            User.role == Role.staff.value,
            User.is_active.is_(True),
            User.deleted_at.is_(None),
        )
        .order_by(User.id)
    )
    if staff_id is not None:
        query = query.where(User.id == staff_id)
    return {staff_id: zone for staff_id, zone in await session.execute(query)}


async def service_staff_ids(session: AsyncSession, service_id: uuid.UUID) -> list[uuid.UUID]:
    """Active staff members offering the service, by id."""
    return list(await offering_staff(session, service_id))


async def _zones(session: AsyncSession, staff_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = await session.execute(
        select(User.id, func.coalesce(StaffProfile.timezone, User.timezone))
        .outerjoin(StaffProfile, StaffProfile.user_id == User.id)
        .where(User.id.in_(list(staff_ids)))
    )
    zones = {staff_id: zone for staff_id, zone in rows}
    return {staff_id: zones.get(staff_id, "UTC") for staff_id in staff_ids}


async def load_calendars(
    session: AsyncSession,
    staff: Mapping[uuid.UUID, str] | Collection[uuid.UUID],
    start: datetime,
    end: datetime,
    *,
    margin: timedelta,
    exclude_appointments: Collection[uuid.UUID] = (),
    exclude_appointment: uuid.UUID | None = None,
) -> list[StaffCalendar]:
    """Hours, overrides, time off and live bookings of these staff around [start, end).

    `staff` maps ids to IANA zones (as `offering_staff` answers), or is just ids (zones looked up).
    """
    if not staff:
        return []
    if not isinstance(staff, Mapping):
        staff = await _zones(session, staff)
    if exclude_appointment is not None:
        exclude_appointments = [*exclude_appointments, exclude_appointment]
    ids = list(staff)
    calendars = {sid: StaffCalendar(sid, ZoneInfo(zone), weekly=defaultdict(list)) for sid, zone in staff.items()}
    weekly = await session.execute(
        select(WeeklyInterval.staff_id, WeeklyInterval.weekday, WeeklyInterval.start_time, WeeklyInterval.end_time)
        .where(WeeklyInterval.staff_id.in_(ids))
        .order_by(WeeklyInterval.start_time)
    )
    for sid, weekday, opens, closes in weekly:
        calendars[sid].weekly[weekday].append((opens, closes))
    # Local dates differ from UTC ones by at most a day (offsets are within ±14 h).
    first_day, last_day = (start - timedelta(days=2)).date(), (end + timedelta(days=2)).date()
    overrides = await session.execute(
        select(DateOverride.staff_id, DateOverride.date, DateOverride.intervals).where(
            DateOverride.staff_id.in_(ids), DateOverride.date.between(first_day, last_day)
        )
    )
    for sid, day, intervals in overrides:
        calendars[sid].overrides[day] = _parse_intervals(intervals)
    lo, hi = start - margin, end + margin
    time_off = _merged_ranges(
        "time_off",
        TimeOff.staff_id,
        func.tstzrange(TimeOff.starts_at, TimeOff.ends_at, "[)"),
        TimeOff.staff_id.in_(ids),
        TimeOff.starts_at < hi,
        TimeOff.ends_at > lo,
    )
    blocked = func.tstzrange(Appointment.blocked_from, Appointment.blocked_until, "[)")
    live = [Appointment.staff_id.in_(ids), _LIVE, blocked.op("&&")(func.tstzrange(lo, hi, "[)"))]
    if exclude_appointments:
        live.append(Appointment.id.not_in(list(exclude_appointments)))
    booked = _merged_ranges("busy", Appointment.staff_id, blocked, *live)
    for sid, kind, lowers, uppers in await session.execute(union_all(time_off, booked)):
        setattr(calendars[sid], kind, list(zip(lowers, uppers, strict=True)))
    return list(calendars.values())


def _merged_ranges(kind: str, staff_column, ranges, *conditions):
    """Per staff member: (staff_id, kind, starts, ends) of the ranges merged by PostgreSQL, as two
    sorted arrays of epoch seconds (starts rounded down, ends up). Thousands of bookings arrive as
    twenty rows: no datetime objects to build, nothing left to sort or merge."""
    merged = (
        select(staff_column.label("staff_id"), func.unnest(func.range_agg(ranges)).label("r"))
        .where(*conditions)
        .group_by(staff_column)
        .subquery()
    )
    lower = cast(func.floor(func.extract("epoch", func.lower(merged.c.r))), BigInteger)
    upper = cast(func.ceil(func.extract("epoch", func.upper(merged.c.r))), BigInteger)
    return select(
        merged.c.staff_id,
        literal(kind),
        func.array_agg(aggregate_order_by(lower, merged.c.r)),
        func.array_agg(aggregate_order_by(upper, merged.c.r)),
    ).group_by(merged.c.staff_id)


async def get_bookable_service(session: AsyncSession, service_id: uuid.UUID) -> Service:
    service = await session.get(Service, service_id)
    if service is None or not service.is_active:
        raise NotFound("No such service")
    return service


def validate_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidWindow("start and end need a UTC offset")
    if end <= start:
        raise InvalidWindow("end must be after start")
    if end - start > MAX_WINDOW:
        raise WindowTooLarge(f"At most {MAX_WINDOW.days} days at a time")


async def _staff_for(session: AsyncSession, service_id: uuid.UUID, staff_id: uuid.UUID | None) -> dict[uuid.UUID, str]:
    staff = await offering_staff(session, service_id, staff_id)
    if staff_id is not None and not staff:
        raise NotFound("This staff member does not offer this service")
    return staff


async def find_slots(
    session: AsyncSession,
    service_id: uuid.UUID,
    start: datetime,
    end: datetime,
    staff_id: uuid.UUID | None = None,
) -> list[Slot]:
    """Free slots of an active service in [start, end), fresh from the database (no cache)."""
    validate_window(start, end)
    service = await get_bookable_service(session, service_id)
    staff = await _staff_for(session, service_id, staff_id)
    rules = rules_for(service)
    calendars = await load_calendars(session, staff, start, end, margin=_margin(rules))
    return free_slots(calendars, rules, start, end, utcnow())


async def availability_text(
    session: AsyncSession,
    service_id: uuid.UUID,
    start: datetime,
    end: datetime,
    *,
    staff_id: uuid.UUID | None = None,
    zone: ZoneInfo | None = None,
) -> str:
    """The public answer as JSON text (see `app.schemas.availability.render`), cached briefly."""
    validate_window(start, end)
    service = await get_bookable_service(session, service_id)
    staff = await _staff_for(session, service_id, staff_id)
    rules = rules_for(service)
    key = await _cache_key(service.id, rules, list(staff), start, end, zone)
    if key is not None:
        cached = await _cache_get(key)
        if cached is not None:
            return cached
    calendars = await load_calendars(session, staff, start, end, margin=_margin(rules))
    now = utcnow()
    slots = free_slots(calendars, rules, start, end, now)
    body = render(slots, start, end, zone)
    if key is not None:
        await _cache_set(key, body, _cache_lifetime(slots, rules, now))
    return body


# --- booking checks ------------------------------------------------------------------------------


async def unoffered_starts(
    session: AsyncSession,
    service: Service,
    staff_id: uuid.UUID,
    starts: Sequence[datetime],
    *,
    exclude_appointments: Collection[uuid.UUID] = (),
) -> list[datetime]:
    """The starts availability would not offer right now (fresh, uncached), in the order given.

    `exclude_appointments` are ignored as bookings (an appointment being moved does not block itself).
    One load covers every start, so a recurring series of 52 is checked in a handful of queries.
    """
    if not starts:
        return []
    staff = await offering_staff(session, service.id, staff_id)
    if not staff:
        return list(starts)
    rules = rules_for(service)
    lo, hi = min(starts) - timedelta(days=1), max(starts) + timedelta(days=1)
    (calendar,) = await load_calendars(
        session, staff, lo, hi, margin=_margin(rules), exclude_appointments=exclude_appointments
    )
    now = utcnow()
    return [s for s in starts if not _offers(calendar, rules, s, now)]


def _offers(calendar: StaffCalendar, rules: ServiceRules, starts_at: datetime, now: datetime) -> bool:
    if starts_at.microsecond:
        return False
    wanted = timestamp(starts_at)
    return any(slot.start == wanted for slot in staff_slots(calendar, rules, starts_at, starts_at + _SECOND, now))


async def is_offered(
    session: AsyncSession,
    service: Service,
    staff_id: uuid.UUID,
    starts_at: datetime,
    *,
    exclude_appointment: uuid.UUID | None = None,
) -> bool:
    """Would availability offer exactly this start (fresh, uncached; the booking's own range ignored)?"""
    excluded = () if exclude_appointment is None else (exclude_appointment,)
    return not await unoffered_starts(session, service, staff_id, [starts_at], exclude_appointments=excluded)


# --- cache ---------------------------------------------------------------------------------------


def version_key(staff_id: uuid.UUID) -> str:
    return f"availability-version:{staff_id}"


def invalidate_after_commit(session: AsyncSession, *staff_ids: uuid.UUID) -> None:
    """Every change that can move a slot calls this; the bump waits for the commit, so no answer
    computed from the old data can be cached under the new version."""
    if staff_ids:
        after_commit(session, lambda: bump_versions(*staff_ids))


async def bump_versions(*staff_ids: uuid.UUID) -> None:
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            for staff_id in staff_ids:
                pipe.incr(version_key(staff_id))
            await pipe.execute()
    except (RedisError, OSError):
        logger.warning("could not bump availability versions for {}", staff_ids)


async def _cache_key(
    service_id: uuid.UUID,
    rules: ServiceRules,
    staff_ids: list[uuid.UUID],
    start: datetime,
    end: datetime,
    zone: ZoneInfo | None,
) -> str | None:
    try:
        # Single-key GETs in a pipeline rather than MGET: cluster-safe, still one round trip.
        async with get_redis().pipeline(transaction=False) as pipe:
            for staff_id in staff_ids:
                pipe.get(version_key(staff_id))
            versions = await pipe.execute()
    except (RedisError, OSError):
        return None
    material = json.dumps(
        [
            _FORMAT,
            str(service_id),
            [str(value) for value in vars(rules).values()],
            [str(s) for s in staff_ids],
            versions,
            timestamp(start),
            timestamp(end),
            start.microsecond,
            end.microsecond,
            zone.key if zone else None,
        ]
    )
    return "availability:" + hashlib.sha256(material.encode()).hexdigest()


def _cache_lifetime(slots: list[Slot], rules: ServiceRules, now: datetime) -> int:
    """Seconds the answer stays right: until the earliest slot falls inside the minimum notice."""
    if not slots:
        return CACHE_SECONDS
    first = min(slot.start for slot in slots)
    return min(CACHE_SECONDS, first - timestamp(now + rules.min_notice, ceil=True))


async def _cache_get(key: str) -> str | None:
    try:
        return await get_redis().get(key)
    except (RedisError, OSError):
        return None


async def _cache_set(key: str, body: str, seconds: int) -> None:
    if seconds > 0:
        with contextlib.suppress(RedisError, OSError):
            await get_redis().set(key, body, ex=seconds)
