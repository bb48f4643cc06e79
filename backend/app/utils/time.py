"""Wall-clock time in IANA zones, DST included. Every datetime that leaves here is aware and UTC."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


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
    """Like `local_to_utc`, but a bound inside a gap moves to the end of the gap (it still bounds)."""
    instant = local_to_utc(day, wall, zone)
    if instant is not None:
        return instant
    # Inside the gap the pre-transition offset applies, which lands just after the gap ends.
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def local_dates(start: datetime, end: datetime, zone: ZoneInfo) -> list[date]:
    """Every local date in `zone` that overlaps [start, end), with one day of margin on both sides."""
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def wall_steps(start: time, end: time, step: timedelta) -> list[time]:
    """Wall-clock times start, start+step, ... strictly before end (on one local day)."""
    anchor = date(2000, 1, 3)
    current, stop = datetime.combine(anchor, start), datetime.combine(anchor, end)
    out: list[time] = []
    while current < stop:
        out.append(current.time())
        current += step
    return out
