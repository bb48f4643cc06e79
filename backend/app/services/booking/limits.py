"""Booking limits: how often a client may book, and how much a staff member takes on.

Per service (admins set them): a client's bookings of it per day, per ISO week (Monday first) and
per month, and the least gap between two of them (from the end of one to the start of the other,
either way round). Per staff member: appointments per day. Per client: at most
`MAX_LIVE_APPOINTMENTS_PER_CLIENT` pending or confirmed appointments starting after now.

Days, weeks and months are the staff member's local calendar: the business's day, whoever books.
Counted are the appointments that were not cancelled (live ones, and completed or no-show ones of
past days); a series counts every occurrence, against the others too; a reschedule leaves the
appointment it moves out of its own counts.

Who is held: a client booking (or moving) for themself. Staff and admins booking for a client are
the business making an exception (the phone call that squeezes someone in), and are not held.

Counting and booking must not interleave. A client-scoped limit takes the client's lock (an
exclusive, transaction-scoped advisory lock) before the staff member's calendar lock; the staff
member's daily limit takes the calendar lock exclusively, so their bookings are counted one at a
time. The limits are read before the locks to choose which to take (a limit set a moment later
applies from the next booking on), and read again under them to count. The hot path never books a
limited booking (`paths`).
"""

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import (
    BookingGapTooShort,
    BookingLimitReached,
    ClientDailyLimit,
    ClientLiveLimit,
    ClientMonthlyLimit,
    ClientWeeklyLimit,
    StaffDailyLimit,
)
from app.models import LIVE_STATUSES, Appointment, AppointmentStatus, Service, StaffProfile, User
from app.models.service import CLIENT_LIMIT_FIELDS
from app.schemas.common import iso_z
from app.utils.time import local_bound_to_utc, utcnow

# What a booking or a reschedule may answer because of a limit (for the routes' `problem_responses`).
LIMIT_ERRORS = (
    ClientDailyLimit,
    ClientWeeklyLimit,
    ClientMonthlyLimit,
    BookingGapTooShort,
    StaffDailyLimit,
    ClientLiveLimit,
)
# What a limit counts: every appointment that was not cancelled.
COUNTED_STATUSES = (*LIVE_STATUSES, AppointmentStatus.completed, AppointmentStatus.no_show)
# The first key of the two-key form, naming this use of advisory locks ("cli\0").
CLIENT_LOCK_CLASS = int.from_bytes(b"cli\0", signed=True)
_MIDNIGHT = time(0)
_LONGEST = timedelta(minutes=1440)  # services.duration_minutes' bound


@dataclass(frozen=True)
class Held:
    """What a booking is held to, as read before its locks: the locks to take, the limits to count."""

    client_id: uuid.UUID | None = None  # the client whose limits apply (their lock is taken)
    staff_id: uuid.UUID | None = None  # the staff member whose daily limit applies (calendar lock exclusive)

    @property
    def shared_calendar(self) -> bool:
        return self.staff_id is None


NOT_HELD = Held()


def full_path_sql(service: str, staff: str) -> str:
    """SQL: whether a limit concerns booking `service` with `staff` (so the hot path must not book it)."""
    limited = " OR ".join(f"{field} IS NOT NULL" for field in CLIENT_LIMIT_FIELDS)
    return (
        f"EXISTS (SELECT FROM services WHERE id = {service} AND ({limited}))"
        f" OR EXISTS (SELECT FROM staff_profiles WHERE user_id = {staff} AND max_appointments_per_day IS NOT NULL)"
    )


def any_global_limit() -> bool:
    """Whether a limit concerns every booking (`MAX_LIVE_APPOINTMENTS_PER_CLIENT`)."""
    return get_settings().max_live_appointments_per_client is not None


async def held_to(
    session: AsyncSession, actor: User, client_id: uuid.UUID, service_id: uuid.UUID, staff_id: uuid.UUID
) -> Held:
    """Before any lock: the limits booking (or moving) `client_id`'s appointment of this service with
    this staff member is held to — none unless the caller is that client."""
    if client_id != actor.id:
        return NOT_HELD
    service_limited = (
        select(literal(1))
        .where(Service.id == service_id, or_(*(getattr(Service, f).is_not(None) for f in CLIENT_LIMIT_FIELDS)))
        .exists()
    )
    staff_limited = (
        select(literal(1))
        .where(StaffProfile.user_id == staff_id, StaffProfile.max_appointments_per_day.is_not(None))
        .exists()
    )
    client_limited, staff_limited_ = (await session.execute(select(service_limited, staff_limited))).one()
    return Held(
        client_id=client_id if client_limited or any_global_limit() else None,
        staff_id=staff_id if staff_limited_ else None,
    )


async def lock_client(session: AsyncSession, held: Held) -> None:
    """The client's lock, if their limits apply: taken before any calendar lock (lock order)."""
    if held.client_id is not None:
        key = int.from_bytes(held.client_id.bytes[-4:], signed=True)
        await session.execute(select(func.pg_advisory_xact_lock(CLIENT_LOCK_CLASS, key)))


# --- counting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Period:
    name: str
    first_day: Callable[[date], date]
    next_first_day: Callable[[date], date]
    error: type[BookingLimitReached]


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


_DAY = _Period("day", lambda d: d, lambda d: d + timedelta(days=1), ClientDailyLimit)
_WEEK = _Period(
    "week", lambda d: d - timedelta(days=d.weekday()), lambda d: d + timedelta(days=7 - d.weekday()), ClientWeeklyLimit
)
_MONTH = _Period("month", lambda d: d.replace(day=1), _next_month, ClientMonthlyLimit)


@dataclass(frozen=True)
class _Limits:
    per_period: list[tuple[_Period, int]]
    min_gap: timedelta | None
    staff_daily: int | None
    live: int | None


async def _limits(session: AsyncSession, held: Held, service_id: uuid.UUID) -> _Limits:
    """The limits as they are now, under the locks (only those the locks taken cover)."""
    columns = [getattr(Service, f) for f in CLIENT_LIMIT_FIELDS]
    staff_limit = (
        select(StaffProfile.max_appointments_per_day).where(StaffProfile.user_id == held.staff_id).scalar_subquery()
    )
    day, week, month, gap, staff_daily = (
        await session.execute(select(*columns, staff_limit).where(Service.id == service_id))
    ).one()
    client = held.client_id is not None
    periods = [(p, n) for p, n in ((_DAY, day), (_WEEK, week), (_MONTH, month)) if client and n is not None]
    return _Limits(
        per_period=periods,
        min_gap=timedelta(minutes=gap) if client and gap is not None else None,
        staff_daily=staff_daily if held.staff_id is not None else None,
        live=get_settings().max_live_appointments_per_client if client else None,
    )


def _bounds(first: date, after: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return local_bound_to_utc(first, _MIDNIGHT, zone), local_bound_to_utc(after, _MIDNIGHT, zone)


def _refuse(error: type[BookingLimitReached], limit: int, period: str, starts: Sequence[datetime], **extra) -> None:
    bound = f"at least {limit} minutes apart" if period == "gap" else f"at most {limit}"
    raise error(
        f"{error.title} ({bound})",
        limit=limit,
        period=period,
        occurrences=[iso_z(s) for s in sorted(starts)],
        **extra,
    )


async def check(
    session: AsyncSession,
    held: Held,
    service: Service,
    staff_id: uuid.UUID,
    zone: ZoneInfo,
    starts: Sequence[datetime],
    *,
    exclude: uuid.UUID | None = None,
) -> None:
    """409 with the limit's code if booking `starts` (UTC; one, or a series' occurrences) breaks a
    limit `held` is held to; `exclude` is the appointment a reschedule moves. Called under the locks."""
    if held == NOT_HELD:
        return
    limits = await _limits(session, held, service.id)
    length = timedelta(minutes=service.duration_minutes)
    if held.client_id is not None:
        await _check_client(session, limits, held.client_id, service.id, zone, starts, length, exclude)
    if limits.staff_daily is not None:
        await _check_staff(session, limits.staff_daily, staff_id, zone, starts, exclude)


def _not_excluded(exclude: uuid.UUID | None):
    return Appointment.id != exclude if exclude is not None else literal(True)


async def _check_client(
    session: AsyncSession,
    limits: _Limits,
    client_id: uuid.UUID,
    service_id: uuid.UUID,
    zone: ZoneInfo,
    starts: Sequence[datetime],
    length: timedelta,
    exclude: uuid.UUID | None,
) -> None:
    local_days = [s.astimezone(zone).date() for s in starts]
    windows: list[tuple[datetime, datetime]] = []
    for period, _ in limits.per_period:
        windows += [_bounds(period.first_day(d), period.next_first_day(d), zone) for d in set(local_days)]
    if limits.min_gap is not None:
        # From the longest an appointment may be before the start (a longer one may end inside the gap).
        windows += [(s - limits.min_gap - _LONGEST, s + length + limits.min_gap) for s in starts]
    if windows:
        query = select(Appointment.starts_at, Appointment.ends_at).where(
            Appointment.client_id == client_id,
            Appointment.service_id == service_id,
            Appointment.status.in_(COUNTED_STATUSES),
            _not_excluded(exclude),
            or_(*(and_(Appointment.starts_at >= lo, Appointment.starts_at < hi) for lo, hi in windows)),
        )
        booked = list((await session.execute(query)).all())
        for period, limit in limits.per_period:
            _check_period(period, limit, zone, starts, local_days, [b.starts_at for b in booked])
        if limits.min_gap is not None:
            _check_gap(limits.min_gap, starts, length, booked)
    if limits.live is not None:
        now = utcnow()
        live = await session.scalar(
            select(func.count()).where(
                Appointment.client_id == client_id,
                Appointment.status.in_(LIVE_STATUSES),
                Appointment.starts_at > now,
                _not_excluded(exclude),
            )
        )
        coming = [s for s in starts if s > now]
        if coming and (live or 0) + len(coming) > limits.live:
            _refuse(ClientLiveLimit, limits.live, "future", coming)


def _check_period(
    period: _Period,
    limit: int,
    zone: ZoneInfo,
    starts: Sequence[datetime],
    local_days: Sequence[date],
    booked: Sequence[datetime],
) -> None:
    new: dict[date, list[datetime]] = defaultdict(list)
    for start, day in zip(starts, local_days, strict=True):
        new[period.first_day(day)].append(start)
    for first in sorted(new):
        lo, hi = _bounds(first, period.next_first_day(first), zone)
        if sum(lo <= b < hi for b in booked) + len(new[first]) > limit:
            _refuse(period.error, limit, period.name, new[first], period_start=first.isoformat())


def _check_gap(gap: timedelta, starts: Sequence[datetime], length: timedelta, booked: Sequence) -> None:
    """Too close: less than `gap` from the end of one to the start of the other, either way round."""
    others = [(b.starts_at, b.ends_at) for b in booked]
    close = []
    for i, start in enumerate(starts):
        end = start + length
        near = others + [(s, s + length) for j, s in enumerate(starts) if j != i]
        if any(lo < end + gap and start < hi + gap for lo, hi in near):
            close.append(start)
    if close:
        _refuse(BookingGapTooShort, int(gap.total_seconds() // 60), "gap", close)


async def _check_staff(
    session: AsyncSession,
    limit: int,
    staff_id: uuid.UUID,
    zone: ZoneInfo,
    starts: Sequence[datetime],
    exclude: uuid.UUID | None,
) -> None:
    new: dict[date, list[datetime]] = defaultdict(list)
    for start in starts:
        new[start.astimezone(zone).date()].append(start)
    days = {day: _bounds(day, day + timedelta(days=1), zone) for day in new}
    query = select(Appointment.starts_at).where(
        Appointment.staff_id == staff_id,
        Appointment.status.in_(COUNTED_STATUSES),
        _not_excluded(exclude),
        or_(*(and_(Appointment.starts_at >= lo, Appointment.starts_at < hi) for lo, hi in days.values())),
    )
    booked = list(await session.scalars(query))
    for day in sorted(new):
        lo, hi = days[day]
        if sum(lo <= b < hi for b in booked) + len(new[day]) > limit:
            _refuse(StaffDailyLimit, limit, "day", new[day], period_start=day.isoformat())
