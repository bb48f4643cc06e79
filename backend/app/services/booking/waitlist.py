"""The waitlist: clients wait for a slot of a service; a freed slot is held for the first of them.

A client joins with a service, optionally a staff member, a window of dates and a local time of
day (`WaitlistEntry`). Whenever a calendar changes in a way that can free a slot (every writer calls
`availability.invalidate_after_commit`, which queues `CALENDAR_CHANGED_JOB`), and every minute
besides, the worker scans the waitlist of each service concerned (`scan_service`): under the
calendar locks of every staff member offering it, taken exclusively, it walks the waiting entries
in order (created_at, id) and gives each the earliest free slot matching its window, if any: one
hold (`WaitlistOffer`, blocking the slot like a booking until `expires_at`), the entry `offered`,
and an email with the link to claim it. Scans of one service queue behind each other on those
locks and each reads what the previous one committed, so a freed slot gets exactly one offer,
however many workers and changes there are; the next waiter gets it only once the hold is gone
(expired: `expire_offers`, every minute; declined; or released).

A group session service's waiters are offered seats (`_Seats`): the slots availability shows, seat
holds counted, each waiter in order the earliest with a seat left in a session they have no seat
or hold of; the hold takes ONE seat of that session (`WaitlistOffer.session_key`), blocks the staff
member's time for everything but that session's other seats, and leaves its other seats bookable.

Claiming books the held slot for the waiter (`claim`: the booking rules, the waiter's own hold
not counted; a seat hold: a seat of its session); an expired offer is 410, a closed one 409. Any
booking of the service by the client closes their entries (`waitlist_holds.close_for_bookings`, and
the hot path's `_INSERT`), which releases their holds.
"""

import bisect
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

from loguru import logger
from sqlalchemy import distinct, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit, unit_of_work
from app.errors import AppError, Conflict, EmailNotVerified, Forbidden, NotFound, SlotNotOffered
from app.models import (
    Appointment,
    OfferStatus,
    Role,
    Service,
    User,
    WaitlistEntry,
    WaitlistOffer,
    WaitlistStatus,
    service_staff,
)
from app.services.booking import appointments, resources, seats, waitlist_holds
from app.services.messaging import outbox
from app.services.messaging.notifications import format_when
from app.services.pagination import paginate
from app.services.scheduling import availability
from app.services.scheduling.availability_changes import announce_changes
from app.services.scheduling.availability_engine import ServiceRules, Slot, free_slots
from app.services.scheduling.availability_queries import ServiceTerms, load_calendars, service_and_staff
from app.services.scheduling.calendar_lock import lock_calendars
from app.services.scheduling.group_sessions import SeatSlot, session_key
from app.utils.time import from_timestamp, timestamp, utcnow

OFFER_TEMPLATE = "waitlist_offer"
SCAN_BATCH = 500  # waiting entries per service and scan at most (the rest wait for the next one)
EXPIRY_BATCH = 500


class InvalidWaitlistWindow(AppError):
    status, code, title = 422, "invalid_waitlist_window", "The waitlist window is not valid"


class WaitlistFull(Conflict):
    code, title = "waitlist_full", "Too many open waitlist entries"


class WaitlistEntryClosed(Conflict):
    code, title = "waitlist_entry_closed", "This waitlist entry is no longer open"


class OfferExpired(AppError):
    status, code, title = 410, "offer_expired", "This offer has expired"


class OfferClosed(Conflict):
    code, title = "offer_closed", "This offer was already claimed, declined or withdrawn"


# --- entries ------------------------------------------------------------------------------------


async def _client_for(session: AsyncSession, actor: User, client_id: uuid.UUID | None, staff_id: uuid.UUID | None):
    if client_id is None or client_id == actor.id:
        return actor
    if actor.role != Role.admin and not (actor.role == Role.staff and staff_id == actor.id):
        raise Forbidden("Only admins, and staff for their own calendar, may add someone else")
    client = await session.get(User, client_id)
    if client is None or not client.is_active or client.deleted_at is not None:
        raise NotFound("No such client")
    return client


async def join(session: AsyncSession, actor: User, data: Any) -> WaitlistEntry:
    """Add a waiting entry (the client's open entries bounded by WAITLIST_ENTRIES_PER_CLIENT)."""
    if not actor.is_verified:
        raise EmailNotVerified("Verify your email address before joining a waitlist")
    client = await _client_for(session, actor, data.client_id, data.staff_id)
    service, staff = await service_and_staff(session, data.service_id, data.staff_id)
    if not staff:
        raise SlotNotOffered("Nobody provides this service")
    settings = get_settings()
    zone = data.timezone or client.timezone
    now = utcnow()
    today = now.astimezone(ZoneInfo(zone)).date()
    horizon = (now + timedelta(days=service.max_advance_days)).astimezone(ZoneInfo(zone)).date()
    if data.first_date < today:
        raise InvalidWaitlistWindow("first_date is in the past")
    if (data.last_date - data.first_date).days >= settings.waitlist_max_days:
        raise InvalidWaitlistWindow(f"At most {settings.waitlist_max_days} days at a time")
    if data.last_date > horizon:
        raise InvalidWaitlistWindow(f"This service is booked at most {service.max_advance_days} days ahead")
    # The client's row, locked against key-changing writes only: two joins at once count one after the other.
    await session.execute(select(User.id).where(User.id == client.id).with_for_update(key_share=True))
    if await session.scalar(waitlist_holds.open_entries_of(client.id)) >= settings.waitlist_entries_per_client:
        raise WaitlistFull(f"At most {settings.waitlist_entries_per_client} open waitlist entries")
    entry = WaitlistEntry(
        id=uuid.uuid4(),
        client_id=client.id,
        service_id=service.id,
        staff_id=data.staff_id,
        first_date=data.first_date,
        last_date=data.last_date,
        earliest_time=data.earliest_time,
        latest_time=data.latest_time,
        timezone=zone,
        status=WaitlistStatus.waiting.value,
    )
    session.add(entry)
    await session.flush()
    await session.refresh(entry, ["created_at"])
    # A matching slot free already is offered at once, by the same scan as any other.
    after_commit(session, partial(announce_changes, list(staff)))
    return entry


def _visible(user: User):
    """Entries the user may see: their own; a staff member's calendar's too; admins' all."""
    if user.role == Role.admin:
        return True
    if user.role == Role.staff:
        return or_(WaitlistEntry.client_id == user.id, WaitlistEntry.staff_id == user.id)
    return WaitlistEntry.client_id == user.id


async def list_entries(
    session: AsyncSession, user: User, *, limit: int, offset: int, **filters: Any
) -> tuple[list[WaitlistEntry], int]:
    """In the queue's order; filters `status`, `service_id`, `staff_id`, `client_id` (None: any)."""
    query = select(WaitlistEntry).where(_visible(user))
    for name, value in filters.items():
        if value is not None:
            query = query.where(getattr(WaitlistEntry, name) == value)
    return await paginate(session, query, WaitlistEntry.created_at, WaitlistEntry.id, limit=limit, offset=offset)


async def get_entry(session: AsyncSession, user: User, entry_id: uuid.UUID) -> WaitlistEntry:
    entry = await session.scalar(select(WaitlistEntry).where(WaitlistEntry.id == entry_id, _visible(user)))
    if entry is None:
        raise NotFound("No such waitlist entry")
    return entry


async def leave(session: AsyncSession, user: User, entry_id: uuid.UUID) -> None:
    """The entry leaves the queue; a slot it holds is released (and passes to the next waiter)."""
    entry = await get_entry(session, user, entry_id)
    if not await waitlist_holds.close_entries(session, WaitlistStatus.left, WaitlistEntry.id == entry.id):
        raise WaitlistEntryClosed(f"This entry is {entry.status}")


# --- offers -------------------------------------------------------------------------------------


def shown_status(offer: WaitlistOffer, now: datetime | None = None) -> str:
    """An `offered` offer past `expires_at` reads `expired` before the sweep records it."""
    if offer.status == OfferStatus.offered and offer.expires_at <= (now or utcnow()):
        return OfferStatus.expired.value
    return offer.status


async def get_offer(session: AsyncSession, user: User, offer_id: uuid.UUID) -> WaitlistOffer:
    """Its client, its staff member and admins may see it."""
    offer = await session.get(WaitlistOffer, offer_id)
    if offer is None or (user.role != Role.admin and user.id not in (offer.client_id, offer.staff_id)):
        raise NotFound("No such offer")
    return offer


def _still_holding(offer: WaitlistOffer, now: datetime) -> None:
    """410 `offer_expired` or 409 `offer_closed` unless the offer still holds its slot at `now`."""
    if offer.status == OfferStatus.expired or (offer.status == OfferStatus.offered and offer.expires_at <= now):
        raise OfferExpired("The slot was held until " + offer.expires_at.astimezone(UTC).isoformat())
    if offer.status != OfferStatus.offered:
        raise OfferClosed(f"This offer was {offer.status}")


async def _locked_offer(session: AsyncSession, user: User, offer_id: uuid.UUID) -> WaitlistOffer:
    """The offer, its client's own (404 for anyone else), re-read under its entry's row lock and
    then its own (entry before offer, as everywhere), refused unless it still holds its slot."""
    offer = await session.get(WaitlistOffer, offer_id)
    if offer is None or offer.client_id != user.id:
        raise NotFound("No such offer")
    await session.execute(select(WaitlistEntry.id).where(WaitlistEntry.id == offer.entry_id).with_for_update())
    held = select(WaitlistOffer, func.statement_timestamp()).where(WaitlistOffer.id == offer_id).with_for_update()
    offer, now = (await session.execute(held.execution_options(populate_existing=True))).one()
    _still_holding(offer, now)
    return offer


async def claim(session: AsyncSession, actor: User, offer_id: uuid.UUID) -> Appointment:
    """Book the held slot for its waiter: the booking's rules and locks, their own hold not counted
    (a seat hold: a seat of its session, the hold's seat taken by the booking).

    Locks in a booking's order: the calendar, then the seat and the resource, and only then the
    entry's and the offer's rows (which a booking, closing the client's entries, also takes last),
    so a claim and a booking of the same client cannot deadlock. Whether the offer still holds is
    read first without a lock (a quick 410 or 409), then settled under the row locks."""
    if not actor.is_verified:
        raise EmailNotVerified("Verify your email address before booking")
    offer = await session.get(WaitlistOffer, offer_id)
    if offer is None or offer.client_id != actor.id:
        raise NotFound("No such offer")
    locked = await appointments.lock_for_booking(session, actor, offer.service_id, offer.staff_id)
    await session.refresh(offer)
    _still_holding(offer, utcnow())
    service, staff = locked.service, locked.staff
    if service is None:
        raise NotFound("No such service")
    if not staff:
        raise SlotNotOffered("This staff member does not provide this service")
    appointments.ensure_within_horizon(service, offer.starts_at)
    own = [offer.id]
    seat = await seats.claim(session, service, actor.id, offer.staff_id, [offer.starts_at], exclude_holds=own)
    await appointments.ensure_offered(
        session, service, offer.staff_id, [offer.starts_at], staff=staff, exclude=seat.exclude, exclude_holds=own
    )
    appointment = seat.place(appointments.new_appointment(service, actor, offer.staff_id, offer.starts_at))
    await resources.assign(session, service, [appointment])  # a hold keeps the staff member's time, not the room
    offer = await _locked_offer(session, actor, offer_id)
    offer.status = OfferStatus.claimed.value
    await session.flush()
    (booked,) = await appointments.insert_all(session, actor, [appointment])  # closes the entry (`booked`)
    offer.appointment_id = booked.id
    await session.flush()
    return booked


async def decline(session: AsyncSession, actor: User, offer_id: uuid.UUID) -> WaitlistOffer:
    """The waiter gives the slot up: it passes to the next waiter at once."""
    offer = await _locked_offer(session, actor, offer_id)
    await waitlist_holds.close_entries(
        session, WaitlistStatus.declined, WaitlistEntry.id == offer.entry_id, offer_status=OfferStatus.declined
    )
    await session.refresh(offer)
    return offer


# --- the scan -----------------------------------------------------------------------------------


def _waiting(service_id: uuid.UUID):
    """The service's waiting entries of active clients whose window has not passed, in queue order."""
    return (
        select(WaitlistEntry)
        .join(User, User.id == WaitlistEntry.client_id)
        .where(
            WaitlistEntry.service_id == service_id,
            WaitlistEntry.status == WaitlistStatus.waiting.value,
            WaitlistEntry.last_date >= func.current_date() - 1,
            User.is_active.is_(True),
            User.deleted_at.is_(None),
        )
        .order_by(WaitlistEntry.created_at, WaitlistEntry.id)
        .limit(SCAN_BATCH)
    )


def _window(entry: WaitlistEntry) -> tuple[datetime, datetime]:
    """The entry's dates as UTC instants: from its first local midnight to the one after its last date."""
    zone = ZoneInfo(entry.timezone)
    first = datetime.combine(entry.first_date, time(), zone)
    return first.astimezone(UTC), datetime.combine(entry.last_date + timedelta(days=1), time(), zone).astimezone(UTC)


def _matches(entry: WaitlistEntry, slot: Slot, zone: ZoneInfo) -> bool:
    start, end = from_timestamp(slot.start).astimezone(zone), from_timestamp(slot.end).astimezone(zone)
    return (
        (entry.staff_id is None or slot.staff_id == entry.staff_id)
        and entry.first_date <= start.date() <= entry.last_date
        and start.time() >= entry.earliest_time
        and (end.date(), end.time()) <= (start.date(), entry.latest_time)
    )


_AnySlot = Slot | SeatSlot


class _Free:
    """The free slots of a scan, by start; a slot given to one entry is blocked for the next ones."""

    def __init__(self, slots: Sequence[_AnySlot], before: int, after: int) -> None:
        self.slots, self.starts = slots, [slot.start for slot in slots]
        self.before, self.after = before, after
        self.held: list[tuple[uuid.UUID, int, int, uuid.UUID | None]] = []

    def blocked(self, slot: _AnySlot) -> tuple[int, int]:
        return slot.start - self.before, slot.end + self.after

    def session_of(self, slot: _AnySlot) -> uuid.UUID | None:
        """The group session a hold of this slot takes a seat of (None: it holds the whole slot)."""
        return None

    def first_for(self, entry: WaitlistEntry) -> _AnySlot | None:
        lo, hi = (timestamp(bound) for bound in _window(entry))
        zone = ZoneInfo(entry.timezone)
        for slot in self.slots[bisect.bisect_left(self.starts, lo) : bisect.bisect_left(self.starts, hi)]:
            if _matches(entry, slot, zone) and self._open(slot, entry):
                return slot
        return None

    def _open(self, slot: _AnySlot, entry: WaitlistEntry) -> bool:
        """Nothing given in this scan overlaps it (but seats of its own session)."""
        low, high = self.blocked(slot)
        key = self.session_of(slot)
        return not any(
            staff == slot.staff_id and a < high and b > low and (key is None or other != key)
            for staff, a, b, other in self.held
        )

    def take(self, slot: _AnySlot, entry: WaitlistEntry) -> None:
        self.held.append((slot.staff_id, *self.blocked(slot), self.session_of(slot)))


class _Seats(_Free):
    """The seat slots of a group session service's scan. A slot is open to an entry while its
    session has a seat left and the entry's client neither a seat nor a hold of it; each offer takes
    one of its seats. A fresh start given (a new session) blocks the others overlapping it."""

    def __init__(self, slots: Sequence[SeatSlot], before: int, after: int, service_id: uuid.UUID) -> None:
        super().__init__(slots, before, after)
        self.keys = {
            (slot.staff_id, slot.start): session_key(service_id, slot.staff_id, slot.start, self.blocked(slot))
            for slot in slots
        }
        self.left = {self.keys[slot.staff_id, slot.start]: slot.seats_left for slot in slots}
        self.occupants: dict[uuid.UUID, set[uuid.UUID]] = {}

    def session_of(self, slot: _AnySlot) -> uuid.UUID:
        return self.keys[slot.staff_id, slot.start]

    def _open(self, slot: _AnySlot, entry: WaitlistEntry) -> bool:
        key = self.session_of(slot)
        return self.left[key] > 0 and entry.client_id not in self.occupants.get(key, ()) and super()._open(slot, entry)

    def take(self, slot: _AnySlot, entry: WaitlistEntry) -> None:
        key = self.session_of(slot)
        self.left[key] -= 1
        self.occupants.setdefault(key, set()).add(entry.client_id)
        super().take(slot, entry)


async def scan_service(service_id: uuid.UUID) -> int:
    """One scan of a service's waitlist, in its own transaction: how many offers it made."""
    async with unit_of_work() as session:
        return await _scan(session, service_id)


async def _scan(session: AsyncSession, service_id: uuid.UUID) -> int:
    try:
        _, staff = await service_and_staff(session, service_id)
    except NotFound:  # inactive: its waiters wait until it comes back
        return 0
    if not staff or not (await session.execute(_waiting(service_id).limit(1))).first():
        return 0
    await lock_calendars(session, *staff, shared=False)
    try:
        terms, now_staff = await service_and_staff(session, service_id)  # as it is now, under the locks
    except NotFound:
        return 0
    staff = {member: zone for member, zone in now_staff.items() if member in staff}
    entries = list(await session.scalars(_waiting(service_id)))
    if not staff or not entries:
        return 0
    rules = availability.rules_for(terms)
    now = utcnow()
    windows = [_window(entry) for entry in entries]
    lo, hi = max(now, min(w[0] for w in windows)), min(now + rules.max_advance, max(w[1] for w in windows))
    if lo >= hi:
        return 0
    find = _free_seats if terms.capacity > 1 else _free_slots
    free = await find(session, terms, staff, rules, lo, hi, now)
    offered = 0
    for entry in entries:
        slot = free.first_for(entry)
        if slot is not None and await _offer(session, entry, slot, free):
            free.take(slot, entry)
            offered += 1
    return offered


def _buffers(rules: ServiceRules) -> tuple[int, int]:
    return rules.buffer_before // timedelta(seconds=1), rules.buffer_after // timedelta(seconds=1)


async def _free_slots(
    session: AsyncSession, terms: ServiceTerms, staff: dict[uuid.UUID, str], rules: ServiceRules, *window: datetime
) -> _Free:
    """A plain service's free slots in the window (lo, hi, now); if it needs a resource, only those
    some resource is free for (the hold does not take it)."""
    lo, hi, now = window
    margin = rules.duration + rules.buffer_before + rules.buffer_after
    calendars = await load_calendars(session, staff, lo, hi, margin=margin)
    slots = free_slots(calendars, rules, lo, hi, now)
    if terms.needs_resource:
        roomy = await availability.with_resources(session, terms.id, rules, slots)
        slots = [Slot(slot.start, slot.end, slot.staff_id) for slot in roomy]
    return _Free(slots, *_buffers(rules))


async def _free_seats(
    session: AsyncSession, terms: ServiceTerms, staff: dict[uuid.UUID, str], rules: ServiceRules, *window: datetime
) -> _Seats:
    """A group session service's seat slots in the window (lo, hi, now) as availability shows
    them (holds counted), with who already sits in or holds a seat of each session."""
    slots = await availability.seat_slots(session, terms, staff, rules, *window)
    if terms.needs_resource:
        slots = await availability.seats_with_resources(session, terms, rules, slots)
    free = _Seats(slots, *_buffers(rules), terms.id)
    free.occupants = await seats.occupants(session, set(free.keys.values()))
    return free


async def _offer(session: AsyncSession, entry: WaitlistEntry, slot: _AnySlot, free: _Free) -> bool:
    """Hold the slot (a seat of its session, for a group session service) for the entry (if it is
    still waiting) and email them the link."""
    moved = await session.execute(
        update(WaitlistEntry)
        .where(WaitlistEntry.id == entry.id, WaitlistEntry.status == WaitlistStatus.waiting.value)
        .values(status=WaitlistStatus.offered.value, updated_at=func.now())
        .returning(WaitlistEntry.id)
        .execution_options(synchronize_session=False)
    )
    if moved.first() is None:  # left, or booked elsewhere, a moment ago
        return False
    low, high = (from_timestamp(bound) for bound in free.blocked(slot))
    offer = WaitlistOffer(
        id=uuid.uuid4(),
        entry_id=entry.id,
        client_id=entry.client_id,
        staff_id=slot.staff_id,
        service_id=entry.service_id,
        starts_at=from_timestamp(slot.start),
        ends_at=from_timestamp(slot.end),
        blocked_from=low,
        blocked_until=high,
        session_key=free.session_of(slot),
        expires_at=utcnow() + timedelta(minutes=get_settings().waitlist_hold_minutes),
        status=OfferStatus.offered.value,
    )
    session.add(offer)
    await session.flush()
    await _email(session, offer)
    availability.invalidate_after_commit(session, offer.staff_id, ranges=[(low, high)], announce=False)
    logger.info("waitlist entry {} offered {} (offer {})", entry.id, offer.starts_at, offer.id)
    return True


async def _email(session: AsyncSession, offer: WaitlistOffer) -> None:
    client = await session.get(User, offer.client_id)
    staff = await session.get(User, offer.staff_id)
    service = await session.get(Service, offer.service_id)
    assert client is not None and staff is not None and service is not None
    zone = ZoneInfo(client.timezone)
    until = offer.expires_at.astimezone(zone)
    await outbox.queue_email(
        session,
        to=client.email,
        template=OFFER_TEMPLATE,
        locale=client.locale,
        context={
            "recipient_name": client.full_name,
            "service_name": service.name,
            "staff_name": staff.full_name,
            "when": format_when(offer.starts_at, offer.ends_at, client.timezone, client.locale),
            "held_until": f"{until:%Y-%m-%d %H:%M} ({zone.key})",
            "link": f"{get_settings().frontend_url.rstrip('/')}/waitlist/offers/{offer.id}",
        },
    )


async def _services_waiting(staff_ids: list[uuid.UUID] | None) -> list[uuid.UUID]:
    """Services with waiting entries (that one of these staff members could serve, if given)."""
    query = select(distinct(WaitlistEntry.service_id)).where(WaitlistEntry.status == WaitlistStatus.waiting.value)
    if staff_ids is not None:
        query = query.join(service_staff, service_staff.c.service_id == WaitlistEntry.service_id).where(
            service_staff.c.staff_id.in_(staff_ids),
            or_(WaitlistEntry.staff_id.is_(None), WaitlistEntry.staff_id == service_staff.c.staff_id),
        )
    async with unit_of_work() as session:
        return sorted(await session.scalars(query))


async def scan(staff_ids: list[uuid.UUID] | None = None) -> int:
    """Scan every service with waiting entries (that these staff members offer): offers made."""
    offered = 0
    for service_id in await _services_waiting(staff_ids):
        try:
            offered += await scan_service(service_id)
        except Exception:  # one service's failure must not hold up the others
            logger.opt(exception=True).error("waitlist scan of service {} failed", service_id)
    return offered


# --- expiry -------------------------------------------------------------------------------------


async def expire_offers() -> int:
    """Offers past `expires_at` become `expired`, and so do their entries (the slot passes on);
    waiting entries whose last date has passed in their zone expire too. How many offers expired."""
    async with unit_of_work() as session:
        due = (
            select(WaitlistOffer.entry_id)
            .where(WaitlistOffer.status == OfferStatus.offered.value, WaitlistOffer.expires_at <= func.now())
            .limit(EXPIRY_BATCH)
        )
        closed = await waitlist_holds.close_entries(
            session,
            WaitlistStatus.expired,
            WaitlistEntry.status == WaitlistStatus.offered.value,
            WaitlistEntry.id.in_(due.scalar_subquery()),
            offer_status=OfferStatus.expired,
        )
        await session.execute(
            update(WaitlistEntry)
            .where(
                WaitlistEntry.status == WaitlistStatus.waiting.value,
                WaitlistEntry.last_date < func.date(func.timezone(WaitlistEntry.timezone, func.now())),
            )
            .values(status=WaitlistStatus.expired.value, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
    if closed:
        logger.info("{} waitlist offers expired unclaimed", len(closed))
    return len(closed)


async def expire_and_scan(ctx: dict[str, Any]) -> int:
    """The arq cron job, every minute and at worker start: expire offers, then scan the whole waitlist."""
    await expire_offers()
    return await scan()


async def scan_changed_calendars(ctx: dict[str, Any], staff_ids: list[str]) -> int:
    """The arq job `CALENDAR_CHANGED_JOB`: these calendars changed; offer what they freed."""
    return await scan([uuid.UUID(staff_id) for staff_id in staff_ids])
