"""Availability: load calendars in a handful of indexed queries, compute, cache by per-staff version."""

import contextlib
import hashlib
import json
import uuid
from collections import defaultdict
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.errors import AppError, NotFound
from app.models import Appointment, DateOverride, Service, StaffProfile, TimeOff, WeeklyInterval, service_staff
from app.models.appointment import LIVE_STATUSES
from app.redis import get_redis
from app.services.availability_engine import ServiceRules, Slot, StaffCalendar, free_slots
from app.utils.time import utcnow

MAX_WINDOW = timedelta(days=62)
CACHE_SECONDS = 30


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


def _parse_intervals(raw: list[dict[str, str]]) -> list[tuple[time, time]]:
    return [(time.fromisoformat(item["start"]), time.fromisoformat(item["end"])) for item in raw]


async def load_calendars(
    session: AsyncSession,
    staff_ids: list[uuid.UUID],
    start: datetime,
    end: datetime,
    *,
    margin: timedelta,
    exclude_appointment: uuid.UUID | None = None,
) -> list[StaffCalendar]:
    """Hours, overrides, time off and live bookings of these staff around [start, end)."""
    if not staff_ids:
        return []
    zones = dict(
        (
            await session.execute(
                select(StaffProfile.user_id, StaffProfile.timezone).where(StaffProfile.user_id.in_(staff_ids))
            )
        ).all()
    )
    calendars = {
        sid: StaffCalendar(sid, ZoneInfo(zones.get(sid, "UTC")), weekly=defaultdict(list)) for sid in staff_ids
    }
    weekly = await session.execute(
        select(WeeklyInterval.staff_id, WeeklyInterval.weekday, WeeklyInterval.start_time, WeeklyInterval.end_time)
        .where(WeeklyInterval.staff_id.in_(staff_ids))
        .order_by(WeeklyInterval.start_time)
    )
    for sid, weekday, opens, closes in weekly:
        calendars[sid].weekly[weekday].append((opens, closes))
    first_day, last_day = (start - timedelta(days=2)).date(), (end + timedelta(days=2)).date()
    overrides = await session.execute(
        select(DateOverride.staff_id, DateOverride.date, DateOverride.intervals).where(
            DateOverride.staff_id.in_(staff_ids), DateOverride.date.between(first_day, last_day)
        )
    )
    for sid, day, intervals in overrides:
        calendars[sid].overrides[day] = _parse_intervals(intervals)
    lo, hi = start - margin, end + margin
    time_off = await session.execute(
        select(TimeOff.staff_id, TimeOff.starts_at, TimeOff.ends_at).where(
            TimeOff.staff_id.in_(staff_ids), TimeOff.starts_at < hi, TimeOff.ends_at > lo
        )
    )
    for sid, busy_from, busy_until in time_off:
        calendars[sid].busy.append((busy_from, busy_until))
    booked = select(Appointment.staff_id, Appointment.blocked_from, Appointment.blocked_until).where(
        Appointment.staff_id.in_(staff_ids),
        Appointment.status.in_([s.value for s in LIVE_STATUSES]),
        and_(Appointment.blocked_from < hi, Appointment.blocked_until > lo),
    )
    if exclude_appointment is not None:
        booked = booked.where(Appointment.id != exclude_appointment)
    for sid, busy_from, busy_until in await session.execute(booked):
        calendars[sid].busy.append((busy_from, busy_until))
    return list(calendars.values())


async def get_bookable_service(session: AsyncSession, service_id: uuid.UUID) -> Service:
    service = await session.get(Service, service_id)
    if service is None or not service.is_active:
        raise NotFound("No such service")
    return service


async def service_staff_ids(session: AsyncSession, service_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(service_staff.c.staff_id)
        .where(service_staff.c.service_id == service_id)
        .order_by(service_staff.c.staff_id)
    )
    return list(rows)


def validate_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidWindow("start and end need a UTC offset")
    if end <= start:
        raise InvalidWindow("end must be after start")
    if end - start > MAX_WINDOW:
        raise WindowTooLarge(f"At most {MAX_WINDOW.days} days at a time")


# --- cache ------------------------------------------------------------------------------------


def version_key(staff_id: uuid.UUID) -> str:
    return f"availability-version:{staff_id}"


def invalidate_after_commit(session: AsyncSession, *staff_ids: uuid.UUID) -> None:
    """Every change that can move a slot calls this; the bump waits for the commit, so no answer
    computed from the old data can be cached under the new version."""
    after_commit(session, lambda: bump_versions(*staff_ids))


async def bump_versions(*staff_ids: uuid.UUID) -> None:
    try:
        async with get_redis().pipeline(transaction=False) as pipe:
            for staff_id in staff_ids:
                pipe.incr(version_key(staff_id))
            await pipe.execute()
    except (RedisError, OSError):
        logger.warning("could not bump availability versions for {}", staff_ids)


async def _cache_key(service: Service, staff_ids: list[uuid.UUID], start: datetime, end: datetime) -> str | None:
    try:
        versions = await get_redis().mget([version_key(s) for s in staff_ids]) if staff_ids else []
    except (RedisError, OSError):
        return None
    material = json.dumps(
        [
            str(service.id),
            str(service.updated_at),
            [str(s) for s in staff_ids],
            versions,
            start.isoformat(),
            end.isoformat(),
        ]
    )
    return "availability:" + hashlib.sha256(material.encode()).hexdigest()


async def find_slots(
    session: AsyncSession,
    service_id: uuid.UUID,
    start: datetime,
    end: datetime,
    staff_id: uuid.UUID | None = None,
) -> list[Slot]:
    validate_window(start, end)
    service = await get_bookable_service(session, service_id)
    staff_ids = await service_staff_ids(session, service_id)
    if staff_id is not None:
        staff_ids = [staff_id] if staff_id in staff_ids else []
    key = await _cache_key(service, staff_ids, start, end)
    if key is not None:
        try:
            cached = await get_redis().get(key)
        except (RedisError, OSError):
            cached = None
        if cached is not None:
            return [
                Slot(datetime.fromisoformat(s), uuid.UUID(sid), datetime.fromisoformat(e))
                for s, sid, e in json.loads(cached)
            ]
    rules = rules_for(service)
    margin = rules.duration + rules.buffer_before + rules.buffer_after
    calendars = await load_calendars(session, staff_ids, start, end, margin=margin)
    slots = free_slots(calendars, rules, start, end, utcnow())
    if key is not None:
        payload = json.dumps([(s.starts_at.isoformat(), str(s.staff_id), s.ends_at.isoformat()) for s in slots])
        with contextlib.suppress(RedisError, OSError):
            await get_redis().set(key, payload, ex=CACHE_SECONDS)
    return slots


async def is_offered(
    session: AsyncSession,
    service: Service,
    staff_id: uuid.UUID,
    starts_at: datetime,
    *,
    exclude_appointment: uuid.UUID | None = None,
) -> bool:
    """Would availability offer exactly this start (fresh, uncached; the booking's own range ignored)?"""
    rules = rules_for(service)
    window_start, window_end = starts_at - timedelta(days=1), starts_at + timedelta(days=1)
    margin = rules.duration + rules.buffer_before + rules.buffer_after
    calendars = await load_calendars(
        session, [staff_id], window_start, window_end, margin=margin, exclude_appointment=exclude_appointment
    )
    return any(slot.starts_at == starts_at for slot in free_slots(calendars, rules, window_start, window_end, utcnow()))
