"""Wall-clock time in IANA zones, DST included. Every datetime that leaves here is aware and UTC.

Resolution rules, used everywhere (availability, bookings, reminders):
- a wall time skipped by a spring-forward gap does not exist: `local_to_utc` answers None;
- a wall time repeated by a fall-back is its first occurrence (`fold=0`, still on summer time);
- a *bound* (the end of working hours, a day's midnight) inside a gap is the moment the gap ends,
  the first instant whose wall clock reads at least that time.
"""

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def local_to_utc(day: date, wall: time, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of a local wall-clock time, or None when that time does not exist that day.

    Ambiguous times (the repeated hour when clocks go back) resolve to their first occurrence
    (`fold=0`), so 01:30 on a fall-back night means the earlier 01:30.
    """
    local = datetime.combine(day, wall, tzinfo=zone)
    instant = local.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None  # skipped by a spring-forward gap
    return instant


def local_bound_to_utc(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """Like `local_to_utc`, but a bound inside a gap becomes the end of the gap (it still bounds)."""
    instant = local_to_utc(day, wall, zone)
    if instant is not None:
        return instant
    # In a gap, fold=0 reads the wall time with the offset before the change and fold=1 with the one
    # after; the change itself lies between the two. Transitions fall on whole seconds: bisect.
    local = datetime.combine(day, wall, tzinfo=zone)
    low = timestamp(local.replace(fold=1))  # still before the change
    high = timestamp(local)  # already after it
    before = local.replace(fold=0).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if from_timestamp(middle).astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return from_timestamp(high)


def fixed_offset(day: date, zone: ZoneInfo) -> timedelta | None:
    """The zone's UTC offset if it holds for the whole local day, None on a day the clocks change.

    Compares the offset in force at the day's start and at the next day's start (`fold=0`, so a
    change at midnight itself is seen too). Zones change their clocks at most once a day.
    """
    return _fixed_offset(day, zone)


@lru_cache(maxsize=65536)
def _fixed_offset(day: date, zone: ZoneInfo) -> timedelta | None:
    first = datetime.combine(day, time(0), tzinfo=zone)
    following = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    offset = first.utcoffset()
    if offset != following.utcoffset() or local_to_utc(day, time(0), zone) is None:
        return None
    return offset


def local_dates(start: datetime, end: datetime, zone: ZoneInfo) -> list[date]:
    """Every local date in `zone` that overlaps [start, end), with one day of margin on both sides."""
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@lru_cache(maxsize=4096)
def wall_steps(start: time, end: time, step: timedelta) -> tuple[time, ...]:
    """Wall-clock times start, start+step, ... strictly before end (on one local day)."""
    anchor = date(2000, 1, 3)
    current, stop = datetime.combine(anchor, start), datetime.combine(anchor, end)
    out: list[time] = []
    while current < stop:
        out.append(current.time())
        current += step
    return tuple(out)


def timestamp(value: datetime, *, ceil: bool = False) -> int:
    """Whole seconds since the epoch of an aware datetime, rounded down (or up with `ceil`)."""
    seconds = (value - EPOCH) // _SECOND
    return seconds + 1 if ceil and value.microsecond else seconds


def from_timestamp(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
