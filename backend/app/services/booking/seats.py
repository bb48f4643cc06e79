"""Seats of group sessions: a booking of a service with `capacity` > 1 is one seat of the session
(staff member, service, start; `scheduling.group_sessions` derives its key).

Never overbooked, whatever the concurrency: after the staff member's calendar lock (shared), each
session's lock is taken exclusively, so the seats of one session are counted and numbered one
booking at a time; a full session is 409 `session_full`, a client who already holds a seat of it
409 `already_booked`. The database holds the numbers apart (a unique index on the live seats'
`(session_key, seat)`), and the lowest free number up to the capacity is the one taken. Lowering a
service's capacity keeps the seats already taken: the session is full until enough cancel.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import AlreadyBooked, Forbidden, SessionFull
from app.models import LIVE_STATUSES, Appointment, Service, User
from app.schemas.common import iso_z
from app.services.booking.appointments import blocked_range, get_visible, handles
from app.services.scheduling.group_sessions import session_key
from app.utils.time import timestamp

# The first key of the two-key advisory lock form, naming this use ("ses\0"); see `calendar_lock`.
SESSION_LOCK_CLASS = int.from_bytes(b"ses\0", signed=True)


def key_of(service: Service, staff_id: uuid.UUID, starts_at: datetime) -> uuid.UUID:
    blocked_from, blocked_until = blocked_range(service, starts_at)
    return session_key(service.id, staff_id, timestamp(starts_at), (timestamp(blocked_from), timestamp(blocked_until)))


def session_lock_key(key: uuid.UUID) -> int:
    """The second key: 32 bits of the session key (a collision only makes two sessions wait for each other)."""
    return int.from_bytes(key.bytes[-4:], signed=True)


async def lock_sessions(session: AsyncSession, keys: Iterable[uuid.UUID]) -> None:
    """Hold each session's lock until the transaction ends, in key order (after the calendar lock)."""
    for lock in sorted({session_lock_key(key) for key in keys}):
        await session.execute(select(func.pg_advisory_xact_lock(SESSION_LOCK_CLASS, lock)))


@dataclass(frozen=True)
class Seats:
    """The seats a booking takes: per start, (session key, seat number); and the live seats of those
    sessions, which do not make the start busy for it."""

    taken: dict[datetime, tuple[uuid.UUID, int]] = field(default_factory=dict)
    exclude: frozenset[uuid.UUID] = frozenset()

    def values(self, starts_at: datetime) -> dict[str, Any]:
        """The columns of a seat at `starts_at` (both None when it is not a seat)."""
        key, seat = self.taken.get(starts_at, (None, None))
        return {"session_key": key, "seat": seat}

    def place(self, appointment: Appointment) -> Appointment:
        for name, value in self.values(appointment.starts_at).items():
            setattr(appointment, name, value)
        return appointment


NO_SEATS = Seats()


async def claim(
    session: AsyncSession, service: Service, client_id: uuid.UUID, staff_id: uuid.UUID, starts: Sequence[datetime]
) -> Seats:
    """For a group session service: lock each start's session, then a seat of each, or refuse them
    all (409 `already_booked`, then 409 `session_full`, naming the starts). The caller holds the
    calendar lock and still checks the starts are offered (with `exclude` set aside)."""
    if service.capacity <= 1:
        return NO_SEATS
    keys = {start: key_of(service, staff_id, start) for start in starts}
    await lock_sessions(session, keys.values())
    query = select(Appointment.id, Appointment.session_key, Appointment.client_id, Appointment.seat).where(
        Appointment.session_key.in_(set(keys.values())), Appointment.status.in_(LIVE_STATUSES)
    )
    seated: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for row in await session.execute(query):
        seated[row.session_key].append(row)
    held = [start for start, key in keys.items() if any(row.client_id == client_id for row in seated[key])]
    if held:
        raise AlreadyBooked("You already have a seat in this session", occurrences=[iso_z(s) for s in held])
    full = [start for start, key in keys.items() if len(seated[key]) >= service.capacity]
    if full:
        raise SessionFull("Every seat of this session is taken", full=[iso_z(s) for s in full])
    taken = {}
    for start, key in keys.items():
        used = {row.seat for row in seated[key]}
        taken[start] = (key, next(n for n in range(1, service.capacity + 1) if n not in used))
    return Seats(taken, frozenset(row.id for rows in seated.values() for row in rows))


async def attendees(
    session: AsyncSession, actor: User, appointment_id: uuid.UUID
) -> tuple[Appointment, Service, list[tuple[Appointment, User]]]:
    """The live seats of the appointment's session with their clients, by seat: its staff member and
    admins only (403 for its client, 404 for anyone else)."""
    appointment = await get_visible(session, actor, appointment_id)
    if not handles(actor, appointment):
        raise Forbidden("Only the session's staff member or an admin can see its attendees")
    service = await session.get(Service, appointment.service_id)
    assert service is not None
    same = (
        Appointment.id == appointment.id
        if appointment.session_key is None
        else Appointment.session_key == appointment.session_key
    )
    query = (
        select(Appointment, User)
        .join(User, User.id == Appointment.client_id)
        .where(same, Appointment.status.in_(LIVE_STATUSES))
        .order_by(Appointment.seat, Appointment.id)
    )
    return appointment, service, [(seat, client) for seat, client in await session.execute(query)]
