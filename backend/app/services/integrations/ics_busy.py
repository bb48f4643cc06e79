"""Busy intervals in iCalendar documents: what an external calendar says a staff member is busy with.

Recurring events are expanded (`recurring-ical-events`: RRULE, RDATE, EXDATE and RECURRENCE-ID
overrides) over a window, and the expansion is bounded: a calendar with more occurrences than
`limit` in the window is refused whole (`TooManyEvents`) rather than half read. Times: a TZID is
honoured, UTC is UTC, and floating times and all-day (DATE) events are the staff member's wall
time. Not busy: `TRANSP:TRANSPARENT`, `STATUS:CANCELLED`, an event the staff member declined (their
ATTENDEE, matched by email, with `PARTSTAT=DECLINED`), and c3po's own appointments pushed to the
calendar (UID `...@c3po`), which the bookings table already blocks. Only the times are kept.
"""

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import recurring_ical_events
from icalendar import Calendar, Component

from app.services.messaging.notifications import UID_DOMAIN

Interval = tuple[datetime, datetime]


class CalendarUnreadable(ValueError):
    """The document is not iCalendar data we can read."""


class TooManyEvents(ValueError):
    """More occurrences in the window than the bound allows."""


def _instant(value: date | datetime, zone: ZoneInfo) -> datetime:
    """A DTSTART/DTEND value as a UTC instant: dates and floating times are wall time in `zone`."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


def _end(event: Component, start: date | datetime) -> date | datetime:
    if (end := event.get("DTEND")) is not None:
        return end.dt
    if (duration := event.get("DURATION")) is not None:
        return start + duration.dt
    return start + timedelta(days=1) if not isinstance(start, datetime) else start


def _own_email(address: object) -> str:
    return str(address).removeprefix("mailto:").removeprefix("MAILTO:").strip().lower()


def _declined(event: Component, email: str) -> bool:
    attendees = event.get("ATTENDEE") or []
    if not isinstance(attendees, list):
        attendees = [attendees]
    for attendee in attendees:
        if _own_email(attendee) == email:
            return str(attendee.params.get("PARTSTAT", "")).upper() == "DECLINED"
    return False


def is_busy(event: Component, email: str) -> bool:
    """Whether an occurrence blocks the staff member's time (see the module's docstring)."""
    if str(event.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT":
        return False
    if str(event.get("STATUS", "")).upper() == "CANCELLED":
        return False
    if str(event.get("UID", "")).lower().endswith(f"@{UID_DOMAIN}"):
        return False
    return not _declined(event, email.lower())


def parse(documents: Iterable[bytes | str]) -> list[Calendar]:
    calendars = []
    for document in documents:
        try:
            calendars.append(Calendar.from_ical(document))
        except (ValueError, KeyError, IndexError) as exc:
            raise CalendarUnreadable(f"not an iCalendar document: {exc}") from None
    return calendars


def busy_intervals(
    calendars: Iterable[Calendar], *, zone: ZoneInfo, email: str, start: datetime, end: datetime, limit: int
) -> list[Interval]:
    """The busy intervals overlapping [start, end), clipped to it, merged and sorted."""
    found: list[Interval] = []
    seen = 0
    for calendar in calendars:
        try:
            # A lazy iterator in order of start: expansion stops at the window's end or the bound.
            for event in recurring_ical_events.of(calendar).after(start.astimezone(zone)):
                first = event.get("DTSTART")
                if first is None:
                    continue
                low = _instant(first.dt, zone)
                if low >= end:
                    break
                seen += 1
                if seen > limit:
                    raise TooManyEvents(f"more than {limit} events between {start:%Y-%m-%d} and {end:%Y-%m-%d}")
                high = _instant(_end(event, first.dt), zone)
                if high > start and high > low and is_busy(event, email):
                    found.append((max(low, start), min(high, end)))
        except (ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, TooManyEvents):
                raise
            raise CalendarUnreadable(f"could not expand the events: {exc}") from None
    return merged(found)


def merged(intervals: list[Interval]) -> list[Interval]:
    """Overlapping or touching intervals joined, sorted by start."""
    out: list[Interval] = []
    for low, high in sorted(intervals):
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out
