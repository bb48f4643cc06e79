"""The reads behind availability: who offers a service, and each staff member's calendar.

Each statement is built once, with bound parameters. In a session (the booking checks, under the
calendar lock) it runs like any other; for the public answer (`session=None`) its SQL, compiled
once for asyncpg, runs on the read pool (`database.fetch_rows`): no BEGIN/COMMIT round trips, no
ORM rows. Busy time arrives pre-merged from PostgreSQL as arrays of epoch seconds: a month of
thousands of bookings is one row per staff member, with no datetime objects to build in Python.
"""

import json
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Integer,
    Text,
    Time,
    Uuid,
    all_,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import BindParameter

from app.database import fetch_rows
from app.errors import NotFound
from app.models import (
    Appointment,
    CalendarBusyBlock,
    DateOverride,
    Role,
    Service,
    StaffProfile,
    TimeOff,
    User,
    WaitlistOffer,
    WeeklyInterval,
    live_hold_sql,
    live_status_sql,
    service_resources,
)
from app.models import service_staff as offers
from app.services.scheduling.availability_engine import Ranges, StaffCalendar

_IDS = any_(bindparam("ids", type_=ARRAY(Uuid)))
_LO, _HI = bindparam("lo", type_=DateTime(timezone=True)), bindparam("hi", type_=DateTime(timezone=True))
_HALF_OPEN = literal_column("'[)'")


class Statement:
    """A statement for a session, and its SQL compiled once for asyncpg (`$1, $2, ...`) with its
    parameters' names in that order (and the values of those the statement fixes itself)."""

    def __init__(self, statement: Executable) -> None:
        compiled = statement.compile(dialect=asyncpg_dialect())
        self.statement, self.sql, self.fixed = statement, compiled.string, compiled.params
        self.names = tuple(compiled.positiontup or ())

    async def rows(self, session: AsyncSession | None, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """In the session, or (None) on the read pool, outside any transaction."""
        if session is None:
            values = {**self.fixed, **params}
            return await fetch_rows(self.sql, *(values[name] for name in self.names))
        return (await session.execute(self.statement, params)).all()


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


_NO_TIME, _NO_DATE, _NO_JSON = cast(null(), Time), cast(null(), Date), cast(null(), Text)
_NO_SECONDS = cast(null(), ARRAY(BigInteger))


def _epoch(value, rounding):
    """Epoch seconds, rounded by `rounding` (floor, ceil), as a bigint. `date_part` is a float8 (exact
    here: every instant the API takes lies in 1900-2200, |seconds| < 2**33, where a float8 still
    tells a microsecond from the whole second); `extract` would be numeric, several times slower."""
    return cast(rounding(func.date_part(literal_column("'epoch'"), value)), BigInteger)


def _merged_ranges(kind: str, staff_column, ranges, *conditions):
    """(staff_id, kind, ..., starts, ends): each staff member's ranges merged by `range_agg`, as two
    arrays of epoch seconds (starts rounded down, ends up, so sub-second parts never shrink them).
    The arrays are not sorted here (sorting them costs PostgreSQL more than Python): see `_ranges`."""
    merged = (
        select(staff_column.label("staff_id"), func.unnest(func.range_agg(ranges)).label("r"))
        .where(*conditions)
        .group_by(staff_column)
        .subquery()
    )
    return select(
        merged.c.staff_id,
        literal_column(f"'{kind}'"),
        cast(null(), Integer),
        _NO_TIME,
        _NO_TIME,
        _NO_DATE,
        _NO_JSON,
        func.array_agg(_epoch(func.lower(merged.c.r), func.floor)),
        func.array_agg(_epoch(func.upper(merged.c.r), func.ceil)),
    ).group_by(merged.c.staff_id)


_EXCLUDED = bindparam("excluded", type_=ARRAY(Uuid))
_BLOCKED = func.tstzrange(Appointment.blocked_from, Appointment.blocked_until, _HALF_OPEN)


def _away(table) -> Executable:
    return select(table.staff_id, table.starts_at, table.ends_at).where(
        table.staff_id == _IDS, table.starts_at < _HI, table.ends_at > _LO
    )


def outside_sessions(session_key, excluded: BindParameter):
    """Not a seat or a seat hold of an excluded group session. An excluded id may name a group
    session: none of its seats, however many have joined, nor its seat holds, are busy (a seat
    joining it does not clash with them). `excluded`: an array of ids, bound (`excluded_ids`)."""
    return or_(session_key.is_(None), session_key != all_(excluded))


def excluded_ids(ids: Collection[uuid.UUID]) -> BindParameter:
    """`ids` as the array `outside_sessions` takes, bound now."""
    return bindparam("excluded_ids", list(ids), type_=ARRAY(Uuid))


_HELD = func.tstzrange(WaitlistOffer.blocked_from, WaitlistOffer.blocked_until, _HALF_OPEN)
# Busy: live bookings and live waitlist holds (a hold blocks its slot exactly like a booking).
_BUSY = union_all(
    select(Appointment.staff_id, _BLOCKED.label("blocked")).where(
        Appointment.staff_id == _IDS,
        _LIVE,
        _BLOCKED.op("&&")(func.tstzrange(_LO, _HI, _HALF_OPEN)),
        Appointment.id != all_(_EXCLUDED),
        outside_sessions(Appointment.session_key, _EXCLUDED),
    ),
    select(WaitlistOffer.staff_id, _HELD).where(
        WaitlistOffer.staff_id == _IDS,
        text(live_hold_sql()),
        _HELD.op("&&")(func.tstzrange(_LO, _HI, _HALF_OPEN)),
        WaitlistOffer.id != all_(bindparam("excluded_holds", type_=ARRAY(Uuid))),
        outside_sessions(WaitlistOffer.session_key, _EXCLUDED),
    ),
).subquery("busy")
# Time away: time off and the busy blocks of external calendars (calendar_sync), which block exactly alike.
_AWAY = union_all(_away(TimeOff), _away(CalendarBusyBlock)).subquery("away")
# A whole calendar in one round trip: weekly hours, date overrides, merged time away and bookings,
# as rows of one shape (staff_id, kind, weekday, opens, closes, date, intervals as JSON text, starts, ends).
_CALENDARS = union_all(
    select(
        WeeklyInterval.staff_id,
        literal_column("'weekly'"),
        WeeklyInterval.weekday,
        WeeklyInterval.start_time,
        WeeklyInterval.end_time,
        _NO_DATE,
        _NO_JSON,
        _NO_SECONDS,
        _NO_SECONDS,
    ).where(WeeklyInterval.staff_id == _IDS),
    select(
        DateOverride.staff_id,
        literal_column("'override'"),
        cast(null(), Integer),
        _NO_TIME,
        _NO_TIME,
        DateOverride.date,
        cast(DateOverride.intervals, Text),
        _NO_SECONDS,
        _NO_SECONDS,
    ).where(
        DateOverride.staff_id == _IDS,
        DateOverride.date.between(bindparam("first_day", type_=Date), bindparam("last_day", type_=Date)),
    ),
    _merged_ranges("time_off", _AWAY.c.staff_id, func.tstzrange(_AWAY.c.starts_at, _AWAY.c.ends_at, _HALF_OPEN)),
    _merged_ranges("busy", _BUSY.c.staff_id, _BUSY.c.blocked),
)
_CALENDARS_STATEMENT = Statement(_CALENDARS)
ZONES = select(User.id, _ZONE).outerjoin(StaffProfile, StaffProfile.user_id == User.id).where(User.id == _IDS)
_ZONES_STATEMENT = Statement(ZONES)


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


class ServiceTerms(NamedTuple):
    """What availability needs of a service (named like `Service`'s columns)."""

    id: uuid.UUID
    is_active: bool
    duration_minutes: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    min_notice_minutes: int
    max_advance_days: int
    capacity: int
    needs_resource: bool = False  # it has a set of resources: a booking takes one (`resource_busy`)


_NEEDS_RESOURCE = exists().where(service_resources.c.service_id == Service.id)


def _service_and_staff(one_member: bool) -> Statement:
    member = [User.id == bindparam("staff_id", type_=Uuid)] if one_member else []
    offering = and_(User.id == offers.c.staff_id, *_ACTIVE_STAFF, *member)
    columns = (getattr(Service, name) for name in ServiceTerms._fields[:-1])
    return Statement(
        select(*columns, _NEEDS_RESOURCE, User.id, _ZONE)
        .outerjoin(offers, offers.c.service_id == Service.id)
        .outerjoin(User, offering)
        .outerjoin(StaffProfile, StaffProfile.user_id == User.id)
        .where(Service.id == bindparam("service_id", type_=Uuid))
        .order_by(User.id)
    )


_SERVICE_AND_STAFF = {False: _service_and_staff(False), True: _service_and_staff(True)}


async def service_and_staff(
    session: AsyncSession | None, service_id: uuid.UUID, staff_id: uuid.UUID | None = None
) -> tuple[ServiceTerms, dict[uuid.UUID, str]]:
    """An active service and `offering_staff` in one round trip (`session` None: on the read pool):
    404 for an unknown or inactive service, or for a `staff_id` who does not offer it."""
    statement = _SERVICE_AND_STAFF[staff_id is not None]
    rows = await statement.rows(session, {"service_id": service_id, "staff_id": staff_id})
    terms = ServiceTerms(*rows[0][: len(ServiceTerms._fields)]) if rows else None
    if terms is None or not terms.is_active:
        raise NotFound("No such service")
    staff = {member: zone for *_, member, zone in rows if member is not None}
    if staff_id is not None and not staff:
        raise NotFound("This staff member does not offer this service")
    return terms, staff


async def staff_zones(session: AsyncSession | None, staff_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each staff member's IANA zone (their profile's, else their account's)."""
    return {member: zone for member, zone in await _ZONES_STATEMENT.rows(session, {"ids": list(staff_ids)})}


def _ranges(starts: list[int], ends: list[int]) -> Ranges:
    """Disjoint ranges, sorted: the i-th smallest start belongs with the i-th smallest end."""
    starts.sort()
    ends.sort()
    return Ranges(starts, ends)


def _intervals(raw: str | list) -> list[tuple[time, time]]:
    """An override's intervals: JSON text (the read pool's raw rows) or already decoded (the
    session's connection decodes JSON)."""
    items = json.loads(raw) if isinstance(raw, str) else raw
    return [(time.fromisoformat(item["start"]), time.fromisoformat(item["end"])) for item in items]


async def load_calendars(
    session: AsyncSession | None,
    staff: Mapping[uuid.UUID, str] | Collection[uuid.UUID],
    start: datetime,
    end: datetime,
    *,
    margin: timedelta,
    exclude_appointments: Collection[uuid.UUID] = (),
    exclude_appointment: uuid.UUID | None = None,
    exclude_holds: Collection[uuid.UUID] = (),
) -> list[StaffCalendar]:
    """Hours, overrides, time off (with external busy blocks) and live bookings and waitlist holds of these staff
    around [start, end), in one query (in the session, or with None on the read pool). `staff` maps
    ids to IANA zones (as `offering_staff` answers), or is just ids.

    `margin` widens the window for busy time (a booking ending just before `start` still blocks a
    slot through its buffers); the `exclude_appointment(s)` do not count as busy (a booking being
    moved does not block itself; a session key there: none of that group session's seats and seat
    holds), nor do the `exclude_holds` (waitlist offers being claimed)."""
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
        "excluded_holds": list(exclude_holds),
    }
    for member, kind, weekday, opens, closes, day, intervals, lowers, uppers in await _CALENDARS_STATEMENT.rows(
        session, params
    ):
        calendar = calendars[member]
        if kind == "weekly":
            calendar.weekly[weekday].append((opens, closes))
        elif kind == "override":
            calendar.overrides[day] = _intervals(intervals)
        else:
            setattr(calendar, kind, _ranges(lowers, uppers))
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


def _away_sql(staff: str, lo: str, hi: str) -> str:
    """Time off and external busy blocks (as `_AWAY`) of one staff member overlapping [lo, hi)."""
    overlapping = f"WHERE staff_id = {staff} AND starts_at < {hi} AND ends_at > {lo}"
    return (
        f"(SELECT starts_at, ends_at FROM time_off {overlapping}"
        f" UNION ALL SELECT starts_at, ends_at FROM {CalendarBusyBlock.__tablename__} {overlapping}) AS away"
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
    overlapping = f"staff_id = {staff} AND {blocked} && tstzrange({lo}, {hi}, '[)')"
    # Live bookings and live waitlist holds, as `_BUSY` (nothing excluded: the hot path books plain
    # services only, for which a seat hold is busy like any other).
    busy = (
        f"(SELECT blocked_from, blocked_until FROM appointments WHERE {overlapping} AND {live_status_sql()}"
        f" UNION ALL SELECT blocked_from, blocked_until FROM {WaitlistOffer.__tablename__}"
        f" WHERE {overlapping} AND {live_hold_sql()}) AS busy_ranges"
    )
    joins = " ".join(
        [
            _merged_epochs("time_off", "tstzrange(starts_at, ends_at, '[)')", _away_sql(staff, lo, hi), "true"),
            _merged_epochs("busy", blocked, busy, "true"),
        ]
    )
    return columns, joins


def calendar_from_row(staff_id: uuid.UUID, zone: str, row: Mapping) -> StaffCalendar:
    calendar = StaffCalendar(staff_id, ZoneInfo(zone), weekly=defaultdict(list))
    for weekday, opens, closes in zip(row["weekdays"], row["opens"], row["closes"], strict=True):
        calendar.weekly[weekday].append((opens, closes))
    for day, intervals in (row["overrides"] or {}).items():
        calendar.overrides[date.fromisoformat(day)] = _intervals(intervals)
    calendar.time_off = _ranges(list(row["time_off_lo"] or ()), list(row["time_off_hi"] or ()))
    calendar.busy = _ranges(list(row["busy_lo"] or ()), list(row["busy_hi"] or ()))
    return calendar
