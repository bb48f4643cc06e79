"""Group sessions: a service of `capacity` > 1 seats that many clients in one staff time slot.

A session is (staff member, service, start, blocked range): its seats are appointments sharing the
`session_key` derived here, which the exclusion constraint lets overlap one another and nothing
else. The blocked range is part of the key, so a seat booked after the service's duration or
buffers changed starts a session of its own, which then clashes with the old one (409).

Availability of such a service (`seat_slots`): a fresh start (nothing booked around it) has
`capacity` seats left; a live session of this service with seats left is offered at its start,
with what is left, if its start would be offered with its own seats set aside (hours, time off and
every other booking still count); a full session is not offered. A seat hold (a waitlist offer
of such a service) takes one seat of its session like a booked seat: it counts in `seats_left`,
and a session only held is a session.
"""

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import text

from app.models import live_hold_sql, live_status_sql
from app.services.scheduling.availability_engine import ServiceRules, StaffCalendar, staff_starts
from app.utils.time import from_timestamp

_NAMESPACE = uuid.UUID("6f1d3c2e-9a4b-5c8d-8e7f-0a1b2c3d4e5f")
_SECOND = timedelta(seconds=1)


class SeatSlot(NamedTuple):
    """A free start of a group session (epoch seconds) and how many seats it has left."""

    start: int
    end: int
    staff_id: uuid.UUID
    seats_left: int


def session_key(service_id: uuid.UUID, staff_id: uuid.UUID, start: int, blocked: tuple[int, int]) -> uuid.UUID:
    """The session of a seat starting at `start` (epoch seconds) with this blocked range."""
    return uuid.uuid5(_NAMESPACE, f"{staff_id}|{service_id}|{start}|{blocked[0]}|{blocked[1]}")


# The live sessions of one service for these staff members around a window: one row per session,
# its seats taken counting its live seats and its live seat holds (a session only held is one too).
_SESSIONS = """
SELECT staff_id, session_key, count(*) AS seats,
       floor(extract(epoch FROM min(starts_at)))::bigint AS start,
       floor(extract(epoch FROM min(blocked_from)))::bigint AS blocked_from,
       ceil(extract(epoch FROM max(blocked_until)))::bigint AS blocked_until
FROM (
    SELECT staff_id, session_key, starts_at, blocked_from, blocked_until FROM appointments
    WHERE staff_id = ANY({staff}) AND service_id = {service} AND session_key IS NOT NULL AND {live}
      AND blocked_from < {hi} AND blocked_until > {lo}
    UNION ALL
    SELECT staff_id, session_key, starts_at, blocked_from, blocked_until FROM waitlist_offers
    WHERE staff_id = ANY({staff}) AND service_id = {service} AND session_key IS NOT NULL AND {held}
      AND blocked_from < {hi} AND blocked_until > {lo}
) AS taken
GROUP BY staff_id, session_key
"""
# One statement, run in a session or on the read pool (`availability_queries.Statement`).
SESSIONS = text(
    _SESSIONS.format(
        staff="CAST(:staff AS uuid[])",
        service="CAST(:service AS uuid)",
        lo="CAST(:lo AS timestamptz)",
        hi="CAST(:hi AS timestamptz)",
        live=live_status_sql(),
        held=live_hold_sql(),
    )
)


class Session:
    """One live session as `SESSIONS` reads it (`seats`: its seats taken, holds included)."""

    __slots__ = ("blocked", "key", "seats", "staff_id", "start")

    def __init__(self, row: Sequence) -> None:
        self.staff_id, self.key, self.seats = row[0], row[1], int(row[2])
        self.start, self.blocked = int(row[3]), (int(row[4]), int(row[5]))


def seat_slots(
    calendars: Sequence[StaffCalendar],
    sessions: Sequence[Session],
    service_id: uuid.UUID,
    capacity: int,
    rules: ServiceRules,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
) -> list[SeatSlot]:
    """Every offered start in [window_start, window_end) with its seats left, by time, then in
    calendar order. `calendars` were loaded with the seats of `sessions` left out of their busy time."""
    duration = rules.duration // _SECOND
    before, after = rules.buffer_before // _SECOND, rules.buffer_after // _SECOND
    by_staff: dict[uuid.UUID, list[Session]] = {}
    for found in sessions:
        by_staff.setdefault(found.staff_id, []).append(found)
    slots: list[tuple[int, int, SeatSlot]] = []
    for position, calendar in enumerate(calendars):
        member, own = calendar.staff_id, by_staff.get(calendar.staff_id, [])
        base = list(calendar.busy)
        everything = replace(calendar, busy=base + [found.blocked for found in own])
        for start in staff_starts(everything, rules, window_start, window_end, now):
            slots.append((start, position, SeatSlot(start, start + duration, member, capacity)))
        for found in own:
            at, left = from_timestamp(found.start), capacity - found.seats
            blocked = (found.start - before, found.start + duration + after)
            current = session_key(service_id, member, found.start, blocked)
            if left <= 0 or found.key != current or not window_start <= at < window_end:
                continue  # full, of another length (the service changed since), or outside the window
            others = replace(calendar, busy=base + [other.blocked for other in own if other is not found])
            if staff_starts(others, rules, at, at + _SECOND, now) == [found.start]:
                slots.append((found.start, position, SeatSlot(found.start, found.start + duration, member, left)))
    slots.sort(key=lambda item: item[:2])
    return [slot for *_, slot in slots]


def exclusions(sessions: Sequence[Session]) -> list[uuid.UUID]:
    """These sessions' keys: the calendars are loaded without their seats (`load_calendars`)."""
    return [found.key for found in sessions]
