"""Availability: load calendars in a handful of indexed queries, compute, cache by per-staff version.

Caching never serves a slot that was just taken: every change that can move a slot bumps the
staff member's version once its transaction has committed (`invalidate_after_commit`), and an
answer is cached under the versions read *before* its data was loaded. An answer computed from
data older than a change is therefore filed under a version that no longer exists. ("Before"
relies on READ COMMITTED, PostgreSQL's default: each query sees what was committed when it began.)
A cached answer also expires before its earliest slot falls inside the minimum notice.
"""

import contextlib
import hashlib
import json
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.errors import AppError, NotFound
from app.models import Service
from app.redis import get_redis
from app.schemas.availability import render
from app.services.scheduling.availability_engine import ServiceRules, Slot, StaffCalendar, free_slots, staff_slots
from app.services.scheduling.availability_queries import load_calendars, offering_staff, service_and_staff
from app.utils.time import timestamp, utcnow

MAX_WINDOW = timedelta(days=62)
CACHE_SECONDS = 30
_FORMAT = 1  # bump when the cached text changes shape
_SECOND = timedelta(seconds=1)


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
) -> list[Slot]:
    """Free slots of an active service in [start, end), fresh from the database (no cache)."""
    validate_window(start, end)
    service, staff = await service_and_staff(session, service_id, staff_id)
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
    service, staff = await service_and_staff(session, service_id, staff_id)
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
        await _cache_set(key, body, cache_lifetime(slots, rules, now))
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


def cache_lifetime(slots: list[Slot], rules: ServiceRules, now: datetime) -> int:
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
