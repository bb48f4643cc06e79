"""Recurring series: a strict RRULE subset, occurrences at the same local wall time, all or nothing."""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import InvalidRecurrence, NotFound, SlotNotOffered
from app.models import LIVE_STATUSES, Appointment, AppointmentSeries, Service, StaffProfile, User
from app.schemas.appointment import to_json
from app.schemas.common import iso_z
from app.schemas.inputs import LATEST
from app.services.booking import appointments, cancellation, limits, resources, seats
from app.services.integrations import webhooks
from app.utils.time import local_bound_to_utc, local_to_utc, utcnow

MAX_OCCURRENCES = 52
MAX_HORIZON = timedelta(days=730)  # the largest `max_advance_days` a service may have
TOO_FAR_AHEAD = "This time is too far ahead to book"
FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY")
_UNTIL = re.compile(r"^(\d{8})(T(\d{6})Z)?$")


@dataclass(frozen=True)
class Rule:
    freq: str
    interval: int = 1
    count: int | None = None
    until: datetime | date | None = None


def parse_rrule(text: str) -> Rule:
    """FREQ=DAILY|WEEKLY|MONTHLY, INTERVAL, and exactly one of COUNT or UNTIL; anything else is refused."""
    body = text.strip()
    body = body[len("RRULE:") :] if body.upper().startswith("RRULE:") else body
    parts: dict[str, str] = {}
    for part in filter(None, body.split(";")):
        name, sep, value = part.partition("=")
        name = name.strip().upper()
        if not sep or not value or name in parts:
            raise InvalidRecurrence(f"Cannot read {part!r}: expected NAME=VALUE, each name once")
        if name not in ("FREQ", "INTERVAL", "COUNT", "UNTIL"):
            raise InvalidRecurrence(f"{name} is not supported; use FREQ, INTERVAL and COUNT or UNTIL")
        parts[name] = value.strip().upper()
    freq = parts.get("FREQ")
    if freq not in FREQUENCIES:
        raise InvalidRecurrence("FREQ must be DAILY, WEEKLY or MONTHLY")
    if ("COUNT" in parts) == ("UNTIL" in parts):
        raise InvalidRecurrence("Give exactly one of COUNT or UNTIL")
    interval = _positive(parts.get("INTERVAL", "1"), "INTERVAL", 366)
    if "COUNT" in parts:
        return Rule(freq, interval, count=_positive(parts["COUNT"], "COUNT", MAX_OCCURRENCES))
    match = _UNTIL.match(parts["UNTIL"])
    if not match:
        raise InvalidRecurrence("UNTIL must be a date (20261231) or a UTC time (20261231T170000Z)")
    try:
        day = datetime.strptime(match[1], "%Y%m%d").date()
        until = datetime.strptime(match[1] + match[3], "%Y%m%d%H%M%S").replace(tzinfo=UTC) if match[3] else day
    except ValueError as exc:
        raise InvalidRecurrence("UNTIL is not a valid date") from exc
    return Rule(freq, interval, until=until)


def _positive(value: str, name: str, maximum: int) -> int:
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise InvalidRecurrence(f"{name} must be a whole number from 1 to {maximum}")
    return int(value)


def _nth_date(first: date, freq: str, n: int) -> tuple[date, date | None]:
    """Step n's earliest possible date (to hold against the horizon) and its date, if it has one."""
    if freq == "DAILY":
        day = first + timedelta(days=n)
        return day, day
    if freq == "WEEKLY":
        day = first + timedelta(weeks=n)
        return day, day
    months = first.month - 1 + n
    year, month = first.year + months // 12, months % 12 + 1
    try:  # RFC 5545: a month without that day (31 April) has no occurrence
        return date(year, month, 1), first.replace(year=year, month=month)
    except ValueError:
        return date(year, month, 1), None


def occurrences(rule: Rule, first: datetime, zone: ZoneInfo, *, horizon: datetime | None = None) -> list[datetime]:
    """UTC starts: `first`, then the same local wall time every INTERVAL days, weeks or months.

    A wall time that does not exist on some date (a spring-forward gap) is refused with the
    occurrence named, never silently shifted to another hour. Nothing is expanded past `horizon`
    (how far ahead one may book; default two years, and never 2200 or later): an occurrence beyond it is refused as not
    offered. Every step moves at least a day, so the loop ends within `horizon - first` days of
    steps, whatever the rule (a month without the day has no occurrence, but still counts a step).
    """
    if horizon is None:
        horizon = first + MAX_HORIZON if first < LATEST - MAX_HORIZON else LATEST
    if first > horizon:
        raise SlotNotOffered(TOO_FAR_AHEAD, occurrences=[iso_z(first)])
    local = first.astimezone(zone)
    last_day = horizon.astimezone(zone).date()
    wall: time = local.time().replace(tzinfo=None)
    starts: list[datetime] = []
    missing: list[datetime] = []
    step = 0
    while rule.count is None or len(starts) < rule.count:
        earliest, day = _nth_date(local.date(), rule.freq, step * rule.interval)
        step += 1
        if not isinstance(rule.until, datetime) and rule.until is not None and earliest > rule.until:
            break
        if earliest > last_day:
            beyond = local_bound_to_utc(day or earliest, wall, zone)
            if isinstance(rule.until, datetime) and beyond > rule.until:
                break
            raise SlotNotOffered(TOO_FAR_AHEAD, occurrences=[iso_z(beyond)])
        if day is None:
            continue
        start = first if step == 1 else local_to_utc(day, wall, zone)
        instant = start or local_bound_to_utc(day, wall, zone)
        if isinstance(rule.until, datetime) and instant > rule.until:
            break
        if not isinstance(rule.until, datetime) and rule.until is not None and day > rule.until:
            break
        if instant > horizon:
            raise SlotNotOffered(TOO_FAR_AHEAD, occurrences=[iso_z(instant)])
        if len(starts) == MAX_OCCURRENCES:
            raise InvalidRecurrence(f"At most {MAX_OCCURRENCES} occurrences")
        starts.append(instant.astimezone(UTC))
        if start is None:
            missing.append(instant)
    if not starts:
        raise InvalidRecurrence("UNTIL is before the first occurrence")
    if missing:
        raise SlotNotOffered(
            f"{wall:%H:%M} does not exist on some dates in {zone.key} (the clocks change)",
            occurrences=[iso_z(m) for m in missing],
        )
    return starts


async def staff_zone(session: AsyncSession, staff_id: uuid.UUID) -> ZoneInfo:
    name = await session.scalar(select(StaffProfile.timezone).where(StaffProfile.user_id == staff_id))
    return ZoneInfo(name or "UTC")


async def book(
    session: AsyncSession,
    actor: User,
    client: User,
    service: Service,
    staff_id: uuid.UUID,
    rrule: str,
    starts_at: datetime,
    notes: str | None = None,
    held: limits.Held = limits.NOT_HELD,
) -> list[Appointment]:
    """Every occurrence checked and inserted in this transaction; one clash and nothing is booked.
    The caller holds the staff member's calendar lock (and the locks `held`'s limits need); every
    occurrence counts against them, the others included."""
    horizon = appointments.booking_horizon(service)
    zone = await staff_zone(session, staff_id)
    starts = occurrences(parse_rrule(rrule), starts_at, zone, horizon=horizon)
    seat = await seats.claim(session, service, client.id, staff_id, starts)
    await appointments.ensure_offered(session, service, staff_id, starts, exclude=seat.exclude)
    await limits.check(session, held, service, staff_id, zone, starts)
    series = AppointmentSeries(rrule=rrule.strip(), client_id=client.id, staff_id=staff_id, service_id=service.id)
    session.add(series)
    await session.flush()
    booked = [seat.place(appointments.new_appointment(service, client, staff_id, s, series.id, notes)) for s in starts]
    await resources.assign(session, service, booked)
    inserted = await appointments.insert_all(session, actor, booked)
    await _emit(session, "series.created", series, inserted)
    return inserted


async def get_series(session: AsyncSession, user: User, series_id: uuid.UUID) -> AppointmentSeries:
    series = await session.get(AppointmentSeries, series_id)
    if series is None or not appointments.can_see(user, series):
        raise NotFound("No such appointment series")
    return series


async def cancel(
    session: AsyncSession, actor: User, series_id: uuid.UUID, start: datetime | None, reason: str | None
) -> tuple[AppointmentSeries, list[Appointment]]:
    """Cancel the live occurrences starting at or after `start` (default now); clients only outside the cut-off."""
    series = await get_series(session, actor, series_id)
    await appointments.lock_calendar(session, actor, series.staff_id)
    if not appointments.can_see(actor, series):
        raise NotFound("No such appointment series")
    now = utcnow()
    start = max(start, now) if start is not None else now
    query = select(Appointment).where(
        Appointment.series_id == series.id,
        Appointment.starts_at >= start,
        Appointment.status.in_(LIVE_STATUSES),
    )
    live = list(await session.scalars(query.order_by(Appointment.starts_at)))
    cancellation.check_series_window(actor, series, live)
    cancelled = await cancellation.cancel_with_emails(session, actor, live, reason, one_email=True)
    await _emit(session, "series.cancelled", series, cancelled)
    return series, cancelled


async def _emit(
    session: AsyncSession, event_type: str, series: AppointmentSeries, occurrences: list[Appointment]
) -> None:
    """The series webhook: `data` as the series endpoints answer (`SeriesOut`)."""
    data = {"series_id": str(series.id), "appointments": [to_json(a) for a in occurrences]}
    await webhooks.emit(session, event_type, [webhooks.Event(data, (series.client_id, series.staff_id))])
