"""Free slots from working hours, overrides, time off and bookings: pure computation, no I/O.

Slots step in local wall-clock time from the start of each working interval, so 09:00 stays
09:00 across a DST change and a wall time that does not exist that day is never offered.
"""

import bisect
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from app.utils.time import local_bound_to_utc, local_dates, local_to_utc, wall_steps

Interval = tuple[time, time]
Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class ServiceRules:
    duration: timedelta
    buffer_before: timedelta
    buffer_after: timedelta
    min_notice: timedelta
    max_advance: timedelta
    step: timedelta | None = None  # None: step by the duration


@dataclass
class StaffCalendar:
    staff_id: uuid.UUID
    zone: ZoneInfo
    weekly: dict[int, list[Interval]]  # weekday (0 = Monday) -> intervals
    overrides: dict[date, list[Interval]] = field(default_factory=dict)
    busy: list[Range] = field(default_factory=list)  # time off and live bookings' blocked ranges


@dataclass(frozen=True, order=True)
class Slot:
    starts_at: datetime
    staff_id: uuid.UUID
    ends_at: datetime


class _BusyIndex:
    """Overlap tests against merged busy ranges by binary search."""

    def __init__(self, ranges: Iterable[Range]) -> None:
        merged: list[list[datetime]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [r[0] for r in merged]
        self._ends = [r[1] for r in merged]

    def overlaps(self, start: datetime, end: datetime) -> bool:
        # The last merged range starting before `end` is the only candidate.
        i = bisect.bisect_left(self._starts, end) - 1
        return i >= 0 and self._ends[i] > start


def staff_slots(
    calendar: StaffCalendar, rules: ServiceRules, window_start: datetime, window_end: datetime, now: datetime
) -> list[Slot]:
    earliest = max(window_start, now + rules.min_notice)
    latest = min(window_end, now + rules.max_advance)
    if earliest >= latest:
        return []
    busy = _BusyIndex(calendar.busy)
    step = rules.step or rules.duration
    slots: list[Slot] = []
    for day in local_dates(earliest, latest, calendar.zone):
        intervals = calendar.overrides.get(day, calendar.weekly.get(day.weekday(), []))
        for open_at, close_at in intervals:
            close = local_bound_to_utc(day, close_at, calendar.zone)
            for wall in wall_steps(open_at, close_at, step):
                start = local_to_utc(day, wall, calendar.zone)
                if start is None or start < earliest or start >= latest:
                    continue
                end = start + rules.duration
                if end > close:
                    break
                if busy.overlaps(start - rules.buffer_before, end + rules.buffer_after):
                    continue
                slots.append(Slot(start, calendar.staff_id, end))
    return slots


def free_slots(
    calendars: Sequence[StaffCalendar],
    rules: ServiceRules,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
) -> list[Slot]:
    """Every free slot of every calendar in [window_start, window_end), sorted by time then staff."""
    slots = [slot for c in calendars for slot in staff_slots(c, rules, window_start, window_end, now)]
    slots.sort()
    return slots
