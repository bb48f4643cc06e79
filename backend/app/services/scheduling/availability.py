"""Availability: load calendars in a handful of indexed queries, compute, cache per staff and day.

Two caches, both filed under versions read *before* the data is loaded (see
`availability_cache` for why that never serves a slot that was just taken):
- each staff member's free starts per local day (`availability_cache`): any window reuses the days
  it covers, and a change recomputes only the days it touches;
- the rendered answer of an exact window, under the tags of every day it covers, for repeats.
A cached answer also expires before its earliest slot falls inside the minimum notice.
"""

import bisect
import contextlib
import hashlib
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import AppError, NotFound
from app.models import Service
from app.redis import get_redis
from app.schemas.availability import render, render_seats, render_starts
from app.services.scheduling import availability_cache as cache
from app.services.scheduling import group_sessions, resource_busy
from app.services.scheduling.availability_changes import bump_versions, invalidate_after_commit
from app.services.scheduling.availability_engine import (
    ServiceRules,
    Slot,
    StaffCalendar,
    free_slots,
    staff_slots,
    staff_starts,
)
from app.services.scheduling.availability_queries import (
    ServiceTerms,
    Statement,
    load_calendars,
    offering_staff,
    service_and_staff,
)
from app.utils.time import from_timestamp, timestamp, utcnow

MAX_WINDOW = timedelta(days=62)
CACHE_SECONDS = cache.CACHE_SECONDS
_FORMAT = 2  # bump when the cached text changes shape
_SECOND = timedelta(seconds=1)
_SESSIONS = Statement(group_sessions.SESSIONS)


class WindowTooLarge(AppError):
    status, code, title = 422, "window_too_large", "The time window is too large"


class InvalidWindow(AppError):
    status, code, title = 422, "invalid_window", "The time window is not valid"


def rules_for(service: Service | ServiceTerms) -> ServiceRules:
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


async def service_staff_ids(session: AsyncSession, service_id: uuid.UUID) -> list[uuid.UUID]:
    """Active staff members offering the service, by id."""
    return list(await offering_staff(session, service_id))


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


async def find_slots(
    session: AsyncSession,
    service_id: uuid.UUID,
    start: datetime,
    end: datetime,
    staff_id: uuid.UUID | None = None,
    *,
    exclude_appointments: Collection[uuid.UUID] = (),
) -> list[Slot]:
    """Free slots of an active service in [start, end), fresh from the database (no cache);
    `exclude_appointments` do not block (an appointment being moved frees its own slot)."""
    validate_window(start, end)
    service, staff = await service_and_staff(session, service_id, staff_id)
    rules = rules_for(service)
    calendars = await load_calendars(
        session, staff, start, end, margin=_margin(rules), exclude_appointments=exclude_appointments
    )
    slots = free_slots(calendars, rules, start, end, utcnow())
    if service.needs_resource:
        return await with_resources(session, service.id, rules, slots, exclude=exclude_appointments)
    return slots


async def find_seat_slots(
    session: AsyncSession,
    service_id: uuid.UUID,
    start: datetime,
    end: datetime,
    staff_id: uuid.UUID | None = None,
    *,
    exclude_appointments: Collection[uuid.UUID] = (),
) -> list[group_sessions.SeatSlot]:
    """`find_slots` of a group session service, each slot with its seats left."""
    validate_window(start, end)
    service, staff = await service_and_staff(session, service_id, staff_id)
    rules = rules_for(service)
    slots = await seat_slots(None, service, staff, rules, start, end, utcnow(), exclude=exclude_appointments)
    if service.needs_resource:
        return await seats_with_resources(session, service, rules, slots, exclude=exclude_appointments)
    return slots


async def seats_with_resources(
    session: AsyncSession | None,
    service: ServiceTerms,
    rules: ServiceRules,
    slots: Sequence[group_sessions.SeatSlot],
    *,
    exclude: Collection[uuid.UUID] = (),
) -> list[group_sessions.SeatSlot]:
    """A group session service that needs a resource: a session someone has booked has its room
    (a seat joins it there); a new session is offered only if some resource is free for it."""
    fresh = [Slot(slot.start, slot.end, slot.staff_id) for slot in slots if slot.seats_left >= service.capacity]
    roomy = {
        (slot.start, slot.staff_id) for slot in await with_resources(session, service.id, rules, fresh, exclude=exclude)
    }
    return [slot for slot in slots if slot.seats_left < service.capacity or (slot.start, slot.staff_id) in roomy]


async def availability_text(
    service_id: uuid.UUID,
    start: datetime,
    end: datetime,
    *,
    staff_id: uuid.UUID | None = None,
    zone: ZoneInfo | None = None,
) -> str:
    """The public answer as JSON text (see `app.schemas.availability.render`), cached by day.

    Read outside any transaction, on the read pool: each query sees what was committed when it
    began, which is all the cache's versions rely on (see `availability_cache`)."""
    validate_window(start, end)
    service, staff = await service_and_staff(None, service_id, staff_id)
    rules = rules_for(service)
    now = utcnow()
    if service.needs_resource:
        # Its resources are taken by bookings with other staff members too, and closed, which no
        # staff member's versions track: answered from the database alone, never cached.
        if service.capacity > 1:
            found = await seat_slots(None, service, staff, rules, start, end, now)
            return render_seats(await seats_with_resources(None, service, rules, found), start, end, zone)
        calendars = await load_calendars(None, staff, start, end, margin=_margin(rules))
        slots = free_slots(calendars, rules, start, end, now)
        return render(await with_resources(None, service.id, rules, slots), start, end, zone)
    earliest, latest = max(start, now + rules.min_notice), min(end, now + rules.max_advance)
    # Dates depend on the zone, not the person: staff members in one zone share them.
    zone_days = {name: _local_days(earliest, latest, ZoneInfo(name)) for name in set(staff.values())}
    reach = cache.reach_days(rules)
    zone_around = {
        name: cache.dates_between(d[0] - timedelta(days=reach), d[-1] + timedelta(days=reach))
        for name, d in zone_days.items()
        if d
    }
    days = {member: zone_days[name] for member, name in staff.items() if zone_days[name]}
    around = {member: zone_around[staff[member]] for member in days}
    versions = await cache.read_versions(around) if days else {}
    if versions is None:  # Redis is down: answer from the database alone
        if service.capacity > 1:
            return render_seats(await seat_slots(None, service, staff, rules, start, end, now), start, end, zone)
        calendars = await load_calendars(None, staff, start, end, margin=_margin(rules))
        return render(free_slots(calendars, rules, start, end, now), start, end, zone)
    firsts = {m: dates[0] for m, dates in around.items()}
    key = _answer_key(service.id, rules, staff, firsts, versions, start, end, zone, service.capacity)
    cached = await _cache_get(key)
    if cached is not None:
        return cached
    if service.capacity > 1:  # group sessions: computed fresh (the day cache keeps bare starts)
        found = await seat_slots(None, service, staff, rules, start, end, now)
        body = render_seats(found, start, end, zone)
        await _cache_set(key, body, _lifetime(found[0].start if found else None, rules, now))
        return body
    tags = {m: cache.tags(versions[m], dates, reach, staff[m]) for m, dates in days.items()}
    rules_key = cache.rules_id(rules)
    found = await cache.read_days(days, rules_key, tags)
    missing = {m: [d for d in dates if d not in found.get(m, {})] for m, dates in days.items()}
    missing = {m: dates for m, dates in missing.items() if dates}
    if missing:
        computed = await _compute_days({m: staff[m] for m in missing}, missing, rules)
        await cache.write_days(computed, rules_key, tags)
        for member, computed_days in computed.items():
            found.setdefault(member, {}).update(computed_days)
    starts = _assemble(found, days, timestamp(earliest, ceil=True), timestamp(latest, ceil=True))
    body = render_starts(starts, rules.duration // _SECOND, start, end, zone)
    first = min((member_starts[0] for member_starts in starts.values() if member_starts), default=None)
    await _cache_set(key, body, _lifetime(first, rules, now))
    return body


async def seat_slots(
    session: AsyncSession | None,
    service: ServiceTerms,
    staff: dict[uuid.UUID, str],
    rules: ServiceRules,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    exclude: Collection[uuid.UUID] = (),
) -> list[group_sessions.SeatSlot]:
    """A group session service's slots with their seats left (`group_sessions`), in the session or
    (None) on the read pool; the appointments `exclude` do not count as bookings."""
    margin = _margin(rules)
    lo, hi = start - margin, end + margin
    params = {"staff": list(staff), "service": service.id, "lo": lo, "hi": hi}
    rows = await _SESSIONS.rows(session, params)
    sessions = [group_sessions.Session(row) for row in rows]
    excluded = [*group_sessions.exclusions(sessions), *exclude]
    calendars = await load_calendars(session, staff, start, end, margin=margin, exclude_appointments=excluded)
    return group_sessions.seat_slots(calendars, sessions, service.id, service.capacity, rules, start, end, now)


class ResourceSlot(NamedTuple):
    """A free slot of a service that needs a resource, with the resource a booking would take."""

    start: int
    end: int
    staff_id: uuid.UUID
    resource_id: uuid.UUID


async def with_resources(
    session: AsyncSession | None,
    service_id: uuid.UUID,
    rules: ServiceRules,
    slots: Sequence[Slot],
    *,
    exclude: Collection[uuid.UUID] = (),
) -> list[ResourceSlot]:
    """The staff slots some resource of the service's set is free for (its blocked range, buffers
    included, clear of the resource's bookings and closures), each with the one a booking would take."""
    if not slots:
        return []
    before, after = rules.buffer_before // _SECOND, rules.buffer_after // _SECOND
    lo = from_timestamp(min(slot.start for slot in slots) - before)
    hi = from_timestamp(max(slot.end for slot in slots) + after)
    busy = await resource_busy.load(session, service_id, lo, hi, exclude=exclude)
    free = []
    for start, end, member in slots:
        resource = busy.first_free(start - before, end + after)
        if resource is not None:
            free.append(ResourceSlot(start, end, member, resource))
    return free


def _local_days(earliest: datetime, latest: datetime, zone: ZoneInfo) -> list[date]:
    """The local dates whose day overlaps [earliest, latest)."""
    if earliest >= latest:
        return []
    last = latest - timedelta(microseconds=1)
    return cache.dates_between(earliest.astimezone(zone).date(), last.astimezone(zone).date())


async def _compute_days(
    staff: dict[uuid.UUID, str], missing: dict[uuid.UUID, list[date]], rules: ServiceRules
) -> dict[uuid.UUID, dict[date, list[int]]]:
    """Every free start of the missing days (whole days: notice and advance are applied later)."""
    zone_dates: dict[str, set[date]] = {}
    for member, dates in missing.items():
        zone_dates.setdefault(staff[member], set()).update(dates)
    bounds = {name: {d: cache.day_bounds(d, ZoneInfo(name)) for d in dates} for name, dates in zone_dates.items()}
    low = from_timestamp(min(lo for days in bounds.values() for lo, _ in days.values()))
    high = from_timestamp(max(hi for days in bounds.values() for _, hi in days.values()))
    calendars = await load_calendars(None, staff, low, high, margin=_margin(rules))
    whole_days = replace(rules, min_notice=timedelta(0), max_advance=high - low + timedelta(days=1))
    computed: dict[uuid.UUID, dict[date, list[int]]] = {}
    for calendar in calendars:
        starts = staff_starts(calendar, whole_days, low, high, low)
        day_bounds = bounds[staff[calendar.staff_id]]
        computed[calendar.staff_id] = {
            day: starts[bisect.bisect_left(starts, day_bounds[day][0]) : bisect.bisect_left(starts, day_bounds[day][1])]
            for day in missing[calendar.staff_id]
        }
    return computed


def _assemble(
    found: dict[uuid.UUID, dict[date, list[int]]], days: dict[uuid.UUID, list[date]], earliest: int, latest: int
) -> dict[uuid.UUID, list[int]]:
    """Each staff member's free starts in [earliest, latest), ascending (their days follow each other)."""
    starts: dict[uuid.UUID, list[int]] = {}
    for member, dates in days.items():
        member_starts: list[int] = []
        for day in dates:
            member_starts += found[member][day]
        starts[member] = member_starts[
            bisect.bisect_left(member_starts, earliest) : bisect.bisect_left(member_starts, latest)
        ]
    return starts


# --- booking checks ------------------------------------------------------------------------------


async def unoffered_starts(
    session: AsyncSession,
    service: Service,
    staff_id: uuid.UUID,
    starts: Sequence[datetime],
    *,
    exclude_appointments: Collection[uuid.UUID] = (),
    staff: Mapping[uuid.UUID, str] | None = None,
    exclude_holds: Collection[uuid.UUID] = (),
) -> list[datetime]:
    """The starts availability would not offer right now (fresh, uncached), in the order given.

    `staff`: `{staff_id: zone}` if the caller has just read (under the calendar lock) that they offer
    the service, `{}` if they do not; None to read it here.
    `exclude_appointments` are ignored as bookings (an appointment being moved does not block itself),
    `exclude_holds` as waitlist holds (a waiter claiming their own).
    One load covers every start, so a recurring series of 52 is checked in a handful of queries.
    """
    if not starts:
        return []
    if staff is None:
        staff = await offering_staff(session, service.id, staff_id)
    if not staff:
        return list(starts)
    rules = rules_for(service)
    lo, hi = min(starts) - timedelta(days=1), max(starts) + timedelta(days=1)
    (calendar,) = await load_calendars(
        session,
        staff,
        lo,
        hi,
        margin=_margin(rules),
        exclude_appointments=exclude_appointments,
        exclude_holds=exclude_holds,
    )
    now = utcnow()
    return [s for s in starts if not offers(calendar, rules, s, now)]


def offers(calendar: StaffCalendar, rules: ServiceRules, starts_at: datetime, now: datetime) -> bool:
    """Whether availability offers exactly this start in a calendar already loaded."""
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


def _answer_key(
    service_id: uuid.UUID,
    rules: ServiceRules,
    staff_zones: dict[uuid.UUID, str],
    firsts: dict[uuid.UUID, date],
    versions: dict[uuid.UUID, list[str]],
    start: datetime,
    end: datetime,
    zone: ZoneInfo | None,
    capacity: int = 1,
) -> str:
    material = json.dumps(
        [
            _FORMAT,
            str(service_id),
            capacity,
            [str(value) for value in vars(rules).values()],
            # Whose versions, from which date on (a day's staff version first, then one per date).
            [[str(s), staff_zones[s], str(firsts.get(s)), "|".join(versions.get(s, ()))] for s in staff_zones],
            timestamp(start),
            timestamp(end),
            start.microsecond,
            end.microsecond,
            zone.key if zone else None,
        ]
    )
    return "availability-answer:" + hashlib.sha256(material.encode()).hexdigest()


def cache_lifetime(slots: Sequence[Slot], rules: ServiceRules, now: datetime) -> int:
    """Seconds the answer stays right: until the earliest slot falls inside the minimum notice."""
    return _lifetime(min((slot.start for slot in slots), default=None), rules, now)


def _lifetime(first: int | None, rules: ServiceRules, now: datetime) -> int:
    """`cache_lifetime` of an answer whose earliest start is `first` (None: no slots)."""
    if first is None:
        return CACHE_SECONDS
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


__all__ = ["bump_versions", "invalidate_after_commit"]  # the calendar writers' entry points
