"""Seats of group sessions: a booking of a service with `capacity` > 1 is one seat of the session
(staff member, service, start; `scheduling.group_sessions` derives its key).

Never overbooked, whatever the concurrency: after the staff member's calendar lock (shared), a
booking takes the advisory lock of a free seat number of its session (`_seat`), lowest first, and
holds it until it commits; numbers run from 1 to the capacity, and the database holds live seats'
numbers apart (a unique index on `(session_key, seat)`). A full session is 409 `session_full`; a
client who already holds a seat of it 409 `already_booked` (a unique index on `(session_key,
client_id)` settles two simultaneous requests of one client). Lowering a service's capacity keeps
the seats already taken: the session is full until enough of them cancel.

A seat hold (a live waitlist offer with the session's key) takes a seat too, without a number: a
booking may take only the first `capacity - holds - seats` free numbers (`_seat`), its own holds
not counted. Holds are made only under the calendar lock taken exclusively (`waitlist.scan`), so
while bookings hold it shared the holds they read can only go (expire, be released), never come:
each reads the same holds or fewer, and their lists of numbers nest, so holds and seats together
never pass the capacity.
"""

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, cast, null, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import AlreadyBooked, Forbidden, SessionFull
from app.models import LIVE_STATUSES, Appointment, Service, User, WaitlistOffer, live_seat_holds
from app.schemas.common import iso_z
from app.services.booking.appointments import blocked_range, get_visible, handles
from app.services.scheduling.group_sessions import session_key
from app.utils.time import timestamp

# The first key of the two-key advisory lock form, naming this use ("seat"); see `calendar_lock`.
SEAT_LOCK_CLASS = int.from_bytes(b"seat", signed=True)
# The first of the numbers given, whose seat lock this transaction takes without waiting (None: all held).
_TRY_SEATS = text(
    "SELECT n FROM unnest(CAST(:numbers AS int[]), CAST(:keys AS int[])) AS f(n, k)"
    " WHERE pg_try_advisory_xact_lock(:class, k) LIMIT 1"
)
# Wait until each of these seats' locks is free without keeping it (each a session-level lock
# released before the next is waited for, in one statement): of the bookings waiting for a seat,
# none then holds it up for the others.
_WAIT_FOR_SEATS = text(
    "SELECT bool_and(pg_advisory_unlock(:class, k))"
    " FROM (SELECT k, pg_advisory_lock(:class, k) AS waited FROM unnest(CAST(:keys AS int[])) AS k) AS seats"
)


def key_of(service: Service, staff_id: uuid.UUID, starts_at: datetime) -> uuid.UUID:
    blocked_from, blocked_until = blocked_range(service, starts_at)
    return session_key(service.id, staff_id, timestamp(starts_at), (timestamp(blocked_from), timestamp(blocked_until)))


def seat_lock_key(key: uuid.UUID, seat: int) -> int:
    """The second key: 32 bits naming seat `seat` of session `key` (a collision only makes two seats
    wait for each other)."""
    return int.from_bytes(uuid.uuid5(key, str(seat)).bytes[-4:], signed=True)


@dataclass(frozen=True)
class Seats:
    """The seats a booking takes: per start, (session key, seat number); and those sessions, whose
    seats (however many join meanwhile) do not make the start busy for it."""

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
    session: AsyncSession,
    service: Service,
    client_id: uuid.UUID,
    staff_id: uuid.UUID,
    starts: Sequence[datetime],
    *,
    exclude_holds: Collection[uuid.UUID] = (),
) -> Seats:
    """For a group session service: a seat of each start's session, or refuse them all (409
    `already_booked`, then 409 `session_full`, naming the starts). The caller holds the calendar
    lock and still checks the starts are offered (with `exclude` set aside). The client's own seat
    holds do not count, nor do `exclude_holds` (the one being claimed)."""
    if service.capacity <= 1:
        return NO_SEATS
    keys = {start: key_of(service, staff_id, start) for start in starts}
    taken: dict[datetime, tuple[uuid.UUID, int]] = {}
    held, full = [], []
    for start, key in sorted(keys.items(), key=lambda item: item[1]):  # sessions in key order
        outcome = await _seat(session, key, service.capacity, client_id, exclude_holds)
        if outcome == HELD:
            held.append(start)
        elif outcome == FULL:
            full.append(start)
        else:
            taken[start] = (key, outcome)
    if held:
        raise AlreadyBooked("You already have a seat in this session", occurrences=[iso_z(s) for s in sorted(held)])
    if full:
        raise SessionFull("Every seat of this session is taken", full=[iso_z(s) for s in sorted(full)])
    return Seats(taken, frozenset(key for key, _ in taken.values()))


HELD, FULL = "held", "full"


def _occupying(keys: Collection[uuid.UUID], exclude_holds: Collection[uuid.UUID] = ()):
    """(session_key, client_id, seat) of each live seat of these sessions, and of each of their
    live seat holds (seat None) but `exclude_holds`: everyone taking a seat of them."""
    booked = select(Appointment.session_key, Appointment.client_id, Appointment.seat).where(
        Appointment.session_key.in_(list(keys)), Appointment.status.in_(LIVE_STATUSES)
    )
    held = select(WaitlistOffer.session_key, WaitlistOffer.client_id, cast(null(), Integer)).where(
        live_seat_holds(keys), WaitlistOffer.id.not_in(list(exclude_holds))
    )
    return union_all(booked, held)


async def occupants(session: AsyncSession, keys: Collection[uuid.UUID]) -> dict[uuid.UUID, set[uuid.UUID]]:
    """The clients with a live seat or seat hold of each of these sessions."""
    found: dict[uuid.UUID, set[uuid.UUID]] = {}
    if keys:
        for key, client_id, _ in await session.execute(_occupying(keys)):
            found.setdefault(key, set()).add(client_id)
    return found


async def _seat(
    session: AsyncSession, key: uuid.UUID, capacity: int, client_id: uuid.UUID, exclude_holds: Collection[uuid.UUID]
) -> str | int:
    """A free seat number of the session, whose lock this transaction holds; or HELD (the client has
    one), or FULL.

    Each seat number has its own lock: a booking takes the lock of the lowest number it can without
    waiting, then reads again that the number is still free (taken by a commit meanwhile, it goes on
    to the next). Only when every free number is held by a booking still in flight does it wait for
    them to be released (without taking them), then reads again: so a session is refused as full
    only once its seats are taken by committed bookings, and bookings of one session wait for each
    other only while it is nearly full. A transaction holds at most one number per session, and
    sessions come in key order: no deadlock. Of the free numbers only the first `capacity - holds -
    seats` are offered, the others being the holds' (other clients' live seat holds, read afresh
    with the seats each time)."""
    mine: int | None = None
    while True:
        rows = (await session.execute(_occupying([key], exclude_holds))).all()
        if any(row.client_id == client_id and row.seat is not None for row in rows):
            return HELD
        seats = [row for row in rows if row.seat is not None]
        holds = sum(1 for row in rows if row.seat is None and row.client_id != client_id)
        used = {row.seat for row in seats}
        free = [n for n in range(1, capacity + 1) if n not in used][: max(0, capacity - holds - len(seats))]
        if not free:
            return FULL
        if mine in free:
            return mine
        numbers = {"numbers": free, "keys": [seat_lock_key(key, n) for n in free], "class": SEAT_LOCK_CLASS}
        mine = await session.scalar(_TRY_SEATS, numbers)
        if mine is None:  # every free seat is being booked: wait until each of them commits or not
            await session.execute(_WAIT_FOR_SEATS, {"class": SEAT_LOCK_CLASS, "keys": numbers["keys"]})


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
