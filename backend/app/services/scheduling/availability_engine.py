"""Free slots from working hours, overrides, time off and bookings: pure computation, no I/O.

Slots step in local wall-clock time from the start of each working interval, so 09:00 stays
09:00 across a DST change and a wall time that does not exist that day is never offered (see
`app.utils.time` for how gaps and repeated hours resolve). A slot's length is real time: one
starting at 01:30 before a spring-forward gap ends an hour later, at 03:30 on the new time.

A slot is free when [start, end) lies inside the working interval, clear of time off, and its
blocked range [start - buffer_before, end + buffer_after) is clear of every live booking's blocked
range (the range the database's exclusion constraint compares). Buffers may reach outside working
hours and into time off: they keep bookings apart, they are not working time.

How: each working interval is a run of starts on its step grid; every booking and time off
forbids an open interval of starts (a booking [b0, b1) forbids (b0 - duration - buffer_after,
b1 + buffer_before)); free starts are the grid points of the runs outside the forbidden intervals.
Python loops over intervals and busy ranges only; the slots themselves come out of `range()`.
A month for twenty busy staff is ~10,000 candidate starts, computed in a few milliseconds.
Instants are whole seconds since the epoch inside: integers are far cheaper than aware datetimes.
"""

import bisect
import itertools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from itertools import repeat
from operator import add, ge, itemgetter
from typing import NamedTuple
from zoneinfo import ZoneInfo

from app.utils.time import (
    fixed_offset,
    from_timestamp,
    local_bound_to_utc,
    local_dates,
    local_to_utc,
    timestamp,
    wall_steps,
)

Interval = tuple[time, time]
Range = tuple[datetime, datetime]
_SECOND = timedelta(seconds=1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_NO_HOURS: tuple[list[Interval], list[tuple[int, int]], bool] = ([], [], False)


@dataclass(frozen=True)
class ServiceRules:
    duration: timedelta
    buffer_before: timedelta
    buffer_after: timedelta
    min_notice: timedelta
    max_advance: timedelta
    step: timedelta | None = None  # None: step by the duration


@dataclass(frozen=True, slots=True)
class Ranges:
    """Ranges [start, end) in epoch seconds as two lists, the i-th start with the i-th end: what the
    database sends, without a tuple per range. Iterates as (start, end) pairs."""

    starts: list[int]
    ends: list[int]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    def __len__(self) -> int:
        return len(self.starts)


@dataclass
class StaffCalendar:
    staff_id: uuid.UUID
    zone: ZoneInfo
    weekly: dict[int, list[Interval]]  # weekday (0 = Monday) -> intervals
    overrides: dict[date, list[Interval]] = field(default_factory=dict)  # replace that date's weekly hours
    # Live bookings' blocked ranges (buffers included) and time off: aware datetimes or epoch seconds.
    busy: Ranges | list[Range] | list[tuple[int, int]] = field(default_factory=list)
    time_off: Ranges | list[Range] | list[tuple[int, int]] = field(default_factory=list)


class Slot(NamedTuple):
    """A free start: `start`/`end` are seconds since the epoch (UTC)."""

    start: int
    end: int
    staff_id: uuid.UUID

    @property
    def starts_at(self) -> datetime:
        return from_timestamp(self.start)

    @property
    def ends_at(self) -> datetime:
        return from_timestamp(self.end)


def _bounds(ranges: Ranges | Sequence[Range] | Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Starts and ends in epoch seconds (starts rounded down, ends up: a fraction never shrinks a range)."""
    if isinstance(ranges, Ranges):
        return ranges.starts, ranges.ends
    if not ranges:
        return [], []
    if isinstance(ranges[0][0], int):
        return [lo for lo, _ in ranges], [hi for _, hi in ranges]  # type: ignore[misc]
    return [timestamp(lo) for lo, _ in ranges], [timestamp(hi, ceil=True) for _, hi in ranges]  # type: ignore[arg-type]


def _forbidden(calendar: StaffCalendar, duration: int, before: int, after: int) -> tuple[list[int], list[int]]:
    """The open intervals (lo, hi) of starts that would clash, merged, as sorted lows and highs.

    A booking [b0, b1) forbids (b0 - duration - buffer_after, b1 + buffer_before), time off [t0, t1)
    forbids (t0 - duration, t1). The lows and the highs are sorted *separately*: that pairs them
    differently when intervals nest, but covers the same points (a point is covered exactly when
    more lows than highs lie below it, whatever the pairing), and with both sorted the merge needs
    no running maximum: consecutive intervals stay apart exactly where the next low is at or past
    the previous high (open intervals that merely touch leave their common point free).
    """
    busy_lows, busy_highs = _bounds(calendar.busy)
    off_lows, off_highs = _bounds(calendar.time_off)
    lows = [*map(add, busy_lows, repeat(-duration - after)), *map(add, off_lows, repeat(-duration))]
    highs = [*map(add, busy_highs, repeat(before)), *off_highs]
    if not lows:
        return [], []
    lows.sort()
    highs.sort()
    following = lows[1:]
    apart = list(map(ge, following, highs))  # apart[i]: interval i + 1 starts a new stretch
    return [lows[0], *itertools.compress(following, apart)], [*itertools.compress(highs, apart), highs[-1]]


def _hours(intervals: Iterable[Interval]) -> tuple[list[Interval], list[tuple[int, int]], bool]:
    """A day's intervals sorted, as seconds after midnight, and whether any two overlap."""
    ordered = sorted(intervals)
    seconds = [(_clock_seconds(opens), _clock_seconds(closes)) for opens, closes in ordered]
    return ordered, seconds, any(b[0] < a[1] for a, b in itertools.pairwise(ordered))


def _clock_seconds(value: time) -> int:
    return value.hour * 3600 + value.minute * 60 + value.second


@lru_cache(maxsize=64)
def _local_days(earliest: int, latest: int, zone: ZoneInfo) -> tuple[tuple[date, int, int | None], ...]:
    """The local dates around [earliest, latest) with their weekday and, on a day without a clock
    change, their local midnight in epoch seconds (else None). Every staff member of one zone in a
    request shares them."""
    days = []
    for day in local_dates(from_timestamp(earliest), from_timestamp(latest), zone):
        offset = fixed_offset(day, zone)
        midnight = None if offset is None else (day.toordinal() - _EPOCH_ORDINAL) * 86400 - offset // _SECOND
        days.append((day, day.weekday(), midnight))
    return tuple(days)


def _runs(calendar: StaffCalendar, duration: int, step: int, earliest: int, latest: int) -> tuple[list, bool]:
    """(first, last) runs of grid starts inside working hours and [earliest, latest), ascending;
    and whether some day's intervals overlap (then runs may repeat starts)."""
    zone = calendar.zone
    weekly = {weekday: _hours(intervals) for weekday, intervals in calendar.weekly.items()}
    runs: list[tuple[int, int]] = []
    overlapping = False
    for day, weekday, midnight in _local_days(earliest, latest, zone):
        override = calendar.overrides.get(day)
        intervals, seconds, overlaps = weekly.get(weekday, _NO_HOURS) if override is None else _hours(override)
        if not intervals:
            continue
        overlapping = overlapping or overlaps
        if midnight is not None:  # no clock change today: wall-clock steps are plain arithmetic
            for opens, closes in seconds:
                first, last = midnight + opens, min(midnight + closes - duration, latest - 1)
                if first < earliest:
                    first -= (first - earliest) // step * step  # up to the first grid point >= earliest
                if first <= last:
                    runs.append((first, last))
            continue
        for opens, closes in intervals:
            close = timestamp(local_bound_to_utc(day, closes, zone))
            for wall in wall_steps(opens, closes, timedelta(seconds=step)):
                instant = local_to_utc(day, wall, zone)
                if instant is None:  # skipped by the clocks
                    continue
                start = timestamp(instant)
                if start + duration > close or start >= latest:
                    break
                if start >= earliest:
                    runs.append((start, start))
    return runs, overlapping


def _free_starts(runs: list[tuple[int, int]], step: int, lows: list[int], highs: list[int]) -> list[int]:
    """Grid points of the runs outside every forbidden open interval."""
    free: list[int] = []
    count = len(lows)
    for first, last in runs:
        at = first
        i = bisect.bisect_right(highs, at)  # the first forbidden interval that can still reach `at`
        while at <= last:
            if i == count or lows[i] >= last:
                free.extend(range(at, last + 1, step))
                break
            lo, hi = lows[i], highs[i]
            i += 1
            if lo >= at:
                free.extend(range(at, lo + 1, step))  # `lo` itself is free: the interval is open
            if hi > at:
                at -= (at - hi) // step * step  # up to the first grid point >= hi
    return free


def staff_starts(
    calendar: StaffCalendar, rules: ServiceRules, window_start: datetime, window_end: datetime, now: datetime
) -> list[int]:
    """The free starts (epoch seconds) of one staff member in [window_start, window_end), ascending."""
    # Starts are whole seconds: start >= x <=> start >= ceil(x), and start < y <=> start < ceil(y).
    earliest = timestamp(max(window_start, now + rules.min_notice), ceil=True)
    latest = timestamp(min(window_end, now + rules.max_advance), ceil=True)
    if earliest >= latest:
        return []
    duration = rules.duration // _SECOND
    step = (rules.step or rules.duration) // _SECOND
    runs, overlapping = _runs(calendar, duration, step, earliest, latest)
    if not runs:
        return []
    lows, highs = _forbidden(calendar, duration, rules.buffer_before // _SECOND, rules.buffer_after // _SECOND)
    starts = _free_starts(runs, step, lows, highs)
    return sorted(set(starts)) if overlapping else starts


def staff_slots(
    calendar: StaffCalendar, rules: ServiceRules, window_start: datetime, window_end: datetime, now: datetime
) -> list[Slot]:
    """Free slots of one staff member starting in [window_start, window_end), in time order."""
    starts = staff_starts(calendar, rules, window_start, window_end, now)
    duration = rules.duration // _SECOND
    ends = map(add, starts, repeat(duration))
    # tuple.__new__ builds the named tuples in C: no Python frame per slot.
    return list(map(tuple.__new__, repeat(Slot), zip(starts, ends, repeat(calendar.staff_id))))


def free_slots(
    calendars: Sequence[StaffCalendar],
    rules: ServiceRules,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
) -> list[Slot]:
    """Every free slot of every calendar in [window_start, window_end), by time, then in calendar order."""
    slots: list[Slot] = []
    for calendar in calendars:
        slots += staff_slots(calendar, rules, window_start, window_end, now)
    if len(calendars) > 1:
        slots.sort(key=itemgetter(0))  # stable: equal starts keep the calendars' order
    return slots


# --- hours checks --------------------------------------------------------------------------------


def working_ranges(calendar: StaffCalendar, start: datetime, end: datetime) -> list[Range]:
    """Working time (weekly hours, or the date's override) around [start, end) in UTC, touching
    intervals merged: 09:00–12:00 and 12:00–17:00 are one stretch."""
    ranges: list[Range] = []
    for day in local_dates(start, end, calendar.zone):
        override = calendar.overrides.get(day)
        intervals = calendar.weekly.get(day.weekday(), []) if override is None else override
        for opens, closes in intervals:
            ranges.append(
                (local_bound_to_utc(day, opens, calendar.zone), local_bound_to_utc(day, closes, calendar.zone))
            )
    merged: list[Range] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def within_hours(calendar: StaffCalendar, start: datetime, end: datetime) -> bool:
    """Does [start, end) lie inside one stretch of working time?"""
    return any(lo <= start and end <= hi for lo, hi in working_ranges(calendar, start, end))
