"""The reads behind availability: who offers a service, and each staff member's calendar.

Statements are built once with bound parameters (SQLAlchemy then reuses their compiled form), and
the busy time arrives pre-merged from PostgreSQL as arrays of epoch seconds: a month of thousands of
bookings is one row per staff member, with no datetime objects to build in Python.
"""

import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Integer,
    Time,
    and_,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import NotFound
from app.models import (
    Appointment,
    DateOverride,
    Role,
    Service,
    StaffProfile,
    TimeOff,
    User,
    WeeklyInterval,
    live_status_sql,
)
from app.models import service_staff as offers
from app.services.scheduling.availability_engine import StaffCalendar

_IDS = bindparam("ids", expanding=True)
_LO, _HI = bindparam("lo", type_=DateTime(timezone=True)), bindparam("hi", type_=DateTime(timezone=True))


def staff_zone(user=User):
    """A staff member's IANA zone: their profile's (outer-joined), else their account's."""
    return func.coalesce(StaffProfile.timezone, user.timezone)


def active_staff(user=User) -> tuple:
    """Conditions on a user (or an alias) for an active staff member."""
    return (user.role == Role.staff.value, user.is_active.is_(True), user.deleted_at.is_(None))


_ZONE = staff_zone()
_ACTIVE_STAFF = active_staff()
# A literal, not bound parameters, so the planner can use the exclusion constraint's partial GiST index.
_LIVE = text(live_status_sql("appointments.status"))


_NO_TIME, _NO_DATE, _NO_JSON = cast(null(), Time), cast(null(), Date), cast(null(), JSONB)
_NO_SECONDS = cast(null(), ARRAY(BigInteger))


def _merged_ranges(kind: str, staff_column, ranges, *conditions):
    """(staff_id, kind, ..., starts, ends): each staff member's ranges merged by `range_agg`, as two
    sorted arrays of epoch seconds (starts rounded down, ends up, so sub-second parts never shrink them)."""
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
        cast(null(), Integer),
        _NO_TIME,
        _NO_TIME,
        _NO_DATE,
        _NO_JSON,
        func.array_agg(aggregate_order_by(lower, merged.c.r)),
        func.array_agg(aggregate_order_by(upper, merged.c.r)),
    ).group_by(merged.c.staff_id)


_BLOCKED = func.tstzrange(Appointment.blocked_from, Appointment.blocked_until, "[)")
# A whole calendar in one round trip: weekly hours, date overrides, merged time off and bookings,
# as rows of one shape (staff_id, kind, weekday, opens, closes, date, intervals, starts, ends).
_CALENDARS = union_all(
    select(
        WeeklyInterval.staff_id,
        literal("weekly"),
        WeeklyInterval.weekday,
        WeeklyInterval.start_time,
        WeeklyInterval.end_time,
        _NO_DATE,
        _NO_JSON,
        _NO_SECONDS,
        _NO_SECONDS,
    ).where(WeeklyInterval.staff_id.in_(_IDS)),
    select(
        DateOverride.staff_id,
        literal("override"),
        cast(null(), Integer),
        _NO_TIME,
        _NO_TIME,
        DateOverride.date,
        cast(DateOverride.intervals, JSONB),
        _NO_SECONDS,
        _NO_SECONDS,
    ).where(DateOverride.staff_id.in_(_IDS), DateOverride.date.between(bindparam("first_day"), bindparam("last_day"))),
    _merged_ranges(
        "time_off",
        TimeOff.staff_id,
        func.tstzrange(TimeOff.starts_at, TimeOff.ends_at, "[)"),
        TimeOff.staff_id.in_(_IDS),
        TimeOff.starts_at < _HI,
        TimeOff.ends_at > _LO,
    ),
    _merged_ranges(
        "busy",
        Appointment.staff_id,
        _BLOCKED,
        Appointment.staff_id.in_(_IDS),
        _LIVE,
        _BLOCKED.op("&&")(func.tstzrange(_LO, _HI, "[)")),
        Appointment.id.not_in(bindparam("excluded", expanding=True)),
    ),
)
ZONES = select(User.id, _ZONE).outerjoin(StaffProfile, StaffProfile.user_id == User.id).where(User.id.in_(_IDS))


async def offering_staff(
    session: AsyncSession, service_id: uuid.UUID, staff_id: uuid.UUID | None = None
) -> dict[uuid.UUID, str]:
    """Active staff members offering the service (or just `staff_id`, if they do): id -> IANA zone."""
    query = (
        select(User.id, _ZONE)
        .join(offers, offers.c.staff_id == User.id)
        .outerjoin(StaffProfile, StaffProfile.user_id == User.id)
        .where(offers.c.service_id == service_id, *_ACTIVE_STAFF)
        .order_by(User.id)
    )
    if staff_id is not None:
        query = query.where(User.id == staff_id)
    return {member: zone for member, zone in await session.execute(query)}


async def service_and_staff(
    session: AsyncSession, service_id: uuid.UUID, staff_id: uuid.UUID | None = None
) -> tuple[Service, dict[uuid.UUID, str]]:
    """An active service and `offering_staff` in one round trip: 404 for an unknown or inactive
    service, or for a `staff_id` who does not offer it."""
    offering = and_(User.id == offers.c.staff_id, *_ACTIVE_STAFF, *([User.id == staff_id] if staff_id else []))
    rows = (
        await session.execute(
            select(Service, User.id, _ZONE)
            .outerjoin(offers, offers.c.service_id == Service.id)
            .outerjoin(User, offering)
            .outerjoin(StaffProfile, StaffProfile.user_id == User.id)
            .where(Service.id == service_id)
            .order_by(User.id)
        )
    ).all()
    if not rows or not rows[0][0].is_active:
        raise NotFound("No such service")
    staff = {member: zone for _, member, zone in rows if member is not None}
    if staff_id is not None and not staff:
        raise NotFound("This staff member does not offer this service")
    return rows[0][0], staff


async def staff_zones(session: AsyncSession, staff_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each staff member's IANA zone (their profile's, else their account's)."""
    return {member: zone for member, zone in await session.execute(ZONES, {"ids": list(staff_ids)})}


def _intervals(raw: list[dict[str, str]]) -> list[tuple[time, time]]:
    return [(time.fromisoformat(item["start"]), time.fromisoformat(item["end"])) for item in raw]


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
    """Hours, overrides, time off and live bookings of these staff around [start, end), in one
    query. `staff` maps ids to IANA zones (as `offering_staff` answers), or is just ids.

    `margin` widens the window for busy time (a booking ending just before `start` still blocks a
    slot through its buffers); the `exclude_appointment(s)` do not count as busy (a booking being
    moved does not block itself)."""
    if not staff:
        return []
    if not isinstance(staff, Mapping):
        zones = await staff_zones(session, staff)
        staff = {member: zones.get(member, "UTC") for member in staff}
    excluded = [*exclude_appointments, *([exclude_appointment] if exclude_appointment else [])]
    ids = list(staff)
    calendars = {
        member: StaffCalendar(member, ZoneInfo(zone), weekly=defaultdict(list)) for member, zone in staff.items()
    }
    # Local dates differ from UTC ones by at most a day (offsets are within ±14 h).
    params = {
        "ids": ids,
        "first_day": (start - timedelta(days=2)).date(),
        "last_day": (end + timedelta(days=2)).date(),
        "lo": start - margin,
        "hi": end + margin,
        "excluded": excluded,
    }
    for member, kind, weekday, opens, closes, day, intervals, lowers, uppers in await session.execute(
        _CALENDARS, params
    ):
        calendar = calendars[member]
        if kind == "weekly":
            calendar.weekly[weekday].append((opens, closes))
        elif kind == "override":
            calendar.overrides[day] = _intervals(intervals)
        else:
            setattr(calendar, kind, list(zip(lowers, uppers, strict=True)))
    for calendar in calendars.values():
        for intervals in calendar.weekly.values():
            intervals.sort()
    return list(calendars.values())


# --- one calendar inside a bigger raw statement (the booking hot path) -----------------------------


def _merged_epochs(alias: str, ranges: str, table: str, conditions: str) -> str:
    """A LATERAL join giving `{alias}_lo`, `{alias}_hi`: the ranges merged by `range_agg`, as sorted
    arrays of epoch seconds (starts rounded down, ends up), like `_merged_ranges`."""
    return (
        f"LEFT JOIN LATERAL (SELECT array_agg(floor(extract(epoch FROM lower(r)))::bigint ORDER BY r) AS {alias}_lo,"
        f" array_agg(ceil(extract(epoch FROM upper(r)))::bigint ORDER BY r) AS {alias}_hi"
        f" FROM unnest((SELECT range_agg({ranges}) FROM {table} WHERE {conditions})) AS r) AS {alias} ON true"
    )


def one_calendar_sql(staff: str, first_day: str, last_day: str, lo: str, hi: str) -> tuple[str, str]:
    """(select list, joins) reading the same calendar as `load_calendars` for one staff member, in
    one row of a raw statement: `staff`, the days and `lo`/`hi` (busy window) are SQL expressions.
    `calendar_from_row` turns the columns back into a `StaffCalendar`."""
    weekly = f"FROM weekly_intervals WHERE staff_id = {staff} ORDER BY weekday, start_time, end_time"
    columns = (
        f"ARRAY(SELECT weekday {weekly}) AS weekdays, ARRAY(SELECT start_time {weekly}) AS opens,"
        f" ARRAY(SELECT end_time {weekly}) AS closes,"
        f" (SELECT jsonb_object_agg(date::text, intervals) FROM date_overrides WHERE staff_id = {staff}"
        f" AND date BETWEEN {first_day} AND {last_day}) AS overrides,"
        " time_off.time_off_lo, time_off.time_off_hi, busy.busy_lo, busy.busy_hi"
    )
    blocked = "tstzrange(blocked_from, blocked_until, '[)')"
    joins = " ".join(
        [
            _merged_epochs(
                "time_off",
                "tstzrange(starts_at, ends_at, '[)')",
                "time_off",
                f"staff_id = {staff} AND starts_at < {hi} AND ends_at > {lo}",
            ),
            _merged_epochs(
                "busy",
                blocked,
                "appointments",
                f"staff_id = {staff} AND {live_status_sql()} AND {blocked} && tstzrange({lo}, {hi}, '[)')",
            ),
        ]
    )
    return columns, joins


def calendar_from_row(staff_id: uuid.UUID, zone: str, row: Mapping) -> StaffCalendar:
    calendar = StaffCalendar(staff_id, ZoneInfo(zone), weekly=defaultdict(list))
    for weekday, opens, closes in zip(row["weekdays"], row["opens"], row["closes"], strict=True):
        calendar.weekly[weekday].append((opens, closes))
    for day, intervals in (row["overrides"] or {}).items():
        calendar.overrides[date.fromisoformat(day)] = _intervals(intervals)
    calendar.time_off = list(zip(row["time_off_lo"] or (), row["time_off_hi"] or (), strict=True))
    calendar.busy = list(zip(row["busy_lo"] or (), row["busy_hi"] or (), strict=True))
    return calendar
