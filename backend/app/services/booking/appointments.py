"""Appointment building blocks shared by booking and series: who sees what, slot checks, writes.

The friendly checks (availability) come first; the guarantee is the exclusion constraint
`no_double_booking`, whose violation (SQLSTATE 23P01) becomes 409 `slot_unavailable`. Inserts and
moves run in a SAVEPOINT, so a clash leaves the request's transaction usable, and every status
change is a compare-and-swap (`UPDATE ... WHERE id = :id AND status = :expected RETURNING`).
"""

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.database import after_commit
from app.errors import AlreadyBooked, InactiveUser, NotFound, SlotNotOffered, SlotUnavailable
from app.metrics import APPOINTMENT_TRANSITIONS
from app.models import (
    LIVE_STATUSES,
    Appointment,
    AppointmentStatus,
    Role,
    Service,
    StaffProfile,
    User,
    WaitlistOffer,
    live_hold_sql,
    service_staff,
)
from app.schemas.appointment import to_json
from app.schemas.common import iso_z
from app.services import audit
from app.services.booking import resources, waitlist_holds
from app.services.integrations import webhooks
from app.services.messaging import events, notifications, reminders
from app.services.pagination import paginate
from app.services.scheduling import availability
from app.services.scheduling.availability_queries import active_staff, excluded_ids, outside_sessions, staff_zone
from app.services.scheduling.calendar_lock import lock_calendars
from app.services.scheduling.resources import ResourceUnavailable
from app.utils.time import utcnow

EXCLUSION_VIOLATION = "23P01"
DUPLICATE_SEAT = "uq_appointments_session_client"
NEW = "new"  # the `from` of a booking in c3po_appointment_transitions_total


class Party(Protocol):
    client_id: uuid.UUID
    staff_id: uuid.UUID


def can_see(user: User, item: Party) -> bool:
    return user.role == Role.admin or user.id in (item.client_id, item.staff_id)


def handles(user: User, item: Party) -> bool:
    """Its staff member (while they are staff) or an admin: confirm, complete, cancel at any time."""
    return user.role == Role.admin or (user.role == Role.staff and user.id == item.staff_id)


async def lock_calendar(session: AsyncSession, actor: User, staff_id: uuid.UUID, *, shared: bool = True) -> None:
    """Take the staff member's calendar lock (shared unless a daily limit is counted), then re-read
    the caller: permissions follow their role as it is now (a demotion that committed while we
    waited counts), not as their token or an earlier read in this request said."""
    await lock_calendars(session, staff_id, shared=shared)
    await session.refresh(actor, ["role", "is_active", "deleted_at"])
    if not actor.is_active or actor.deleted_at is not None:
        raise InactiveUser()


_ACTOR, _STAFF = aliased(User, name="actor"), aliased(User, name="staff")


@dataclass(frozen=True)
class Booking:
    """What a booking reads under the calendar lock."""

    service: Service | None  # None: unknown or inactive
    staff: dict[uuid.UUID, str]  # {staff_id: zone} if they actively offer the service, else empty
    # Held so the session's identity map (weak references) keeps it for the emails' `session.get`.
    provider: User | None


async def lock_for_booking(
    session: AsyncSession, actor: User, service_id: uuid.UUID, staff_id: uuid.UUID, *, shared: bool = True
) -> Booking:
    """`lock_calendar` (exclusive if not `shared`: a daily limit to count), then in one round trip:
    the caller re-read, the service and the staff member."""
    await lock_calendars(session, staff_id, shared=shared)
    offering = and_(
        service_staff.c.service_id == Service.id, service_staff.c.staff_id == staff_id, Service.is_active.is_(True)
    )
    # Not `_STAFF.id == service_staff.staff_id`: with that column also equated to `staff_id` in the
    # join before, PostgreSQL 15 joined the staff member even where no service_staff row matched.
    staff_live = and_(_STAFF.id == staff_id, service_staff.c.staff_id.is_not(None), *active_staff(_STAFF))
    query = (
        select(_ACTOR, Service, _STAFF, staff_zone(_STAFF))
        .select_from(_ACTOR)
        .outerjoin(Service, Service.id == service_id)
        .outerjoin(service_staff, offering)
        .outerjoin(_STAFF, staff_live)
        .outerjoin(StaffProfile, StaffProfile.user_id == _STAFF.id)
        .where(_ACTOR.id == actor.id)
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(query)).one_or_none()
    if row is None or not actor.is_active or actor.deleted_at is not None:
        raise InactiveUser()
    _, service, staff, zone = row

    active = service if service is not None and service.is_active else None
    return Booking(active, {staff.id: zone} if staff is not None else {}, staff)


async def get_visible(session: AsyncSession, user: User, appointment_id: uuid.UUID) -> Appointment:
    """The appointment if the caller may see it; 404 otherwise (no probing of other people's ids)."""
    appointment = await session.get(Appointment, appointment_id)
    if appointment is None or not can_see(user, appointment):
        raise NotFound("No such appointment")
    return appointment


async def list_appointments(
    session: AsyncSession,
    user: User,
    *,
    status: AppointmentStatus | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    staff_id: uuid.UUID | None = None,
    client_id: uuid.UUID | None = None,
    series_id: uuid.UUID | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Appointment], int]:
    """Admins see all; everybody else the appointments they are the client or the staff member of."""
    query = select(Appointment)
    if user.role != Role.admin:
        query = query.where((Appointment.client_id == user.id) | (Appointment.staff_id == user.id))
    filters = {"status": status, "staff_id": staff_id, "client_id": client_id, "series_id": series_id}
    for name, value in filters.items():
        if value is not None:
            query = query.where(getattr(Appointment, name) == value)
    if start is not None:
        query = query.where(Appointment.starts_at >= start)
    if end is not None:
        query = query.where(Appointment.starts_at < end)
    return await paginate(session, query, Appointment.starts_at, Appointment.id, limit=limit, offset=offset)


# --- checks -------------------------------------------------------------------------------------


def booking_horizon(service: Service) -> datetime:
    """The latest start the service may be booked for now (`max_advance_days` ahead)."""
    return utcnow() + timedelta(days=service.max_advance_days)


def ensure_within_horizon(service: Service, starts_at: datetime) -> None:
    """Refuse a start beyond `max_advance_days` before anything is computed for it."""
    if starts_at > booking_horizon(service):
        raise SlotNotOffered("This time is too far ahead to book", occurrences=[iso_z(starts_at)])


def blocked_range(service: Service, starts_at: datetime) -> tuple[datetime, datetime]:
    ends_at = starts_at + timedelta(minutes=service.duration_minutes)
    return (
        starts_at - timedelta(minutes=service.buffer_before_minutes),
        ends_at + timedelta(minutes=service.buffer_after_minutes),
    )


async def _taken(
    session: AsyncSession,
    service: Service,
    staff_id: uuid.UUID,
    starts: Sequence[datetime],
    exclude: Collection[uuid.UUID],
    exclude_holds: Collection[uuid.UUID] = (),
) -> list[datetime]:
    """The starts whose blocked range overlaps a live appointment or waitlist hold of this staff
    member; `exclude` as `availability_queries.load_calendars` takes it (a session key there: that
    session's seats and seat holds)."""
    lo, hi = blocked_range(service, min(starts))[0], blocked_range(service, max(starts))[1]
    query = select(Appointment.blocked_from, Appointment.blocked_until).where(
        Appointment.staff_id == staff_id,
        Appointment.status.in_(LIVE_STATUSES),
        Appointment.blocked_from < hi,
        Appointment.blocked_until > lo,
    )
    held = select(WaitlistOffer.blocked_from, WaitlistOffer.blocked_until).where(
        WaitlistOffer.staff_id == staff_id,
        text(live_hold_sql()),
        WaitlistOffer.blocked_from < hi,
        WaitlistOffer.blocked_until > lo,
        WaitlistOffer.id.not_in(list(exclude_holds)),
    )
    if exclude:
        sessions = excluded_ids(exclude)
        query = query.where(Appointment.id.not_in(exclude), outside_sessions(Appointment.session_key, sessions))
        held = held.where(outside_sessions(WaitlistOffer.session_key, sessions))
    busy = (await session.execute(query.union_all(held))).all()

    def clashes(start: datetime) -> bool:
        lo, hi = blocked_range(service, start)
        return any(busy_from < hi and busy_until > lo for busy_from, busy_until in busy)

    return [s for s in starts if clashes(s)]


async def ensure_offered(
    session: AsyncSession,
    service: Service,
    staff_id: uuid.UUID,
    starts: Sequence[datetime],
    *,
    exclude: uuid.UUID | Collection[uuid.UUID] | None = None,
    staff: Mapping[uuid.UUID, str] | None = None,
    exclude_holds: Collection[uuid.UUID] = (),
) -> None:
    """422 `slot_not_offered` for times availability would never offer (hours, time off, policies);
    409 `slot_unavailable` when a live booking (or a waitlist hold) is the reason, so a lost race
    reads the same however it was lost (here, or at the constraint). `exclude`: appointments that do
    not count as bookings (the one being moved), or group sessions whose seats do not (the session a
    seat joins); `exclude_holds`: the caller's own holds (a waiter claiming their offer)."""
    excluded = frozenset((exclude,) if isinstance(exclude, uuid.UUID) else exclude or ())
    missing = await availability.unoffered_starts(
        session, service, staff_id, starts, exclude_appointments=excluded, staff=staff, exclude_holds=exclude_holds
    )
    if not missing:
        return
    taken = await _taken(session, service, staff_id, missing, excluded, exclude_holds)
    refused = [s for s in missing if s not in taken]
    if refused:
        raise SlotNotOffered(
            "This time is not offered: outside working hours, during time off, too soon or too far ahead",
            occurrences=[iso_z(s) for s in refused],
        )
    raise SlotUnavailable(conflicts=[iso_z(s) for s in taken])


def is_double_booking(exc: IntegrityError) -> bool:
    orig = exc.orig
    codes = {getattr(orig, "sqlstate", None), getattr(getattr(orig, "__cause__", None), "sqlstate", None)}
    return EXCLUSION_VIOLATION in codes


def refuse_duplicate_seat(exc: IntegrityError, starts_at: datetime) -> None:
    """409 `already_booked` when the violation is a client's second live seat of one session."""
    orig = exc.orig
    names = {getattr(orig, "constraint_name", None), getattr(getattr(orig, "__cause__", None), "constraint_name", None)}
    if DUPLICATE_SEAT in names:
        raise AlreadyBooked("You already have a seat in this session", occurrences=[iso_z(starts_at)]) from None


# --- create -------------------------------------------------------------------------------------


def new_appointment(
    service: Service,
    client: User,
    staff_id: uuid.UUID,
    starts_at: datetime,
    series_id: uuid.UUID | None = None,
    notes: str | None = None,
) -> Appointment:
    starts_at = starts_at.astimezone(UTC)
    blocked_from, blocked_until = blocked_range(service, starts_at)
    return Appointment(
        id=uuid.uuid4(),
        series_id=series_id,
        client_id=client.id,
        staff_id=staff_id,
        service_id=service.id,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=service.duration_minutes),
        blocked_from=blocked_from,
        blocked_until=blocked_until,
        status=AppointmentStatus.pending if service.requires_confirmation else AppointmentStatus.confirmed,
        notes=notes,
        sequence=0,
    )


async def insert_all(session: AsyncSession, actor: User, appointments: list[Appointment]) -> list[Appointment]:
    """Insert each in its own SAVEPOINT so every clash is found and listed; any clash books nothing.
    A single appointment needs none: its clash is the whole answer, and the request rolls back."""
    conflicts: list[datetime] = []
    resource_clashes = 0  # clashes at the resource constraint, not the staff member's
    if len(appointments) == 1:
        session.add(appointments[0])
        try:
            await session.flush()
        except IntegrityError as exc:
            refuse_duplicate_seat(exc, appointments[0].starts_at)
            if not is_double_booking(exc):
                raise
            refusal = ResourceUnavailable if resources.is_resource_clash(exc) else SlotUnavailable
            raise refusal(conflicts=[iso_z(appointments[0].starts_at)]) from None
    else:
        for appointment in appointments:
            try:
                async with session.begin_nested():
                    session.add(appointment)
            except IntegrityError as exc:
                refuse_duplicate_seat(exc, appointment.starts_at)
                if not is_double_booking(exc):
                    raise
                conflicts.append(appointment.starts_at)
                resource_clashes += resources.is_resource_clash(exc)
    if conflicts:
        refusal = ResourceUnavailable if resource_clashes == len(conflicts) else SlotUnavailable
        raise refusal(conflicts=[iso_z(s) for s in conflicts])
    await waitlist_holds.close_for_bookings(session, [(a.client_id, a.service_id) for a in appointments])
    # Audit rows, reminders and emails are flushed together, with the request's commit.
    created: list[webhooks.Event] = []
    for appointment in appointments:
        await audit.record(
            session,
            actor_id=actor.id,
            action="appointment.create",
            entity_type="appointment",
            entity_id=appointment.id,
            after=audit.snapshot(appointment),
        )
        await reminders.schedule(session, appointment, new=True)
        data = _publish(session, appointment, "appointment.created")
        created.append(webhooks.Event(data, webhooks.appointment_people(appointment)))
        count_transition(session, NEW, appointment.status)
    await webhooks.emit(session, "appointment.created", created)
    availability.invalidate_after_commit(session, appointments[0].staff_id, announce=False)
    await notifications.booked(session, appointments)
    return appointments


# --- changes ------------------------------------------------------------------------------------


def count_transition(session: AsyncSession, before: str, after: str) -> None:
    """`c3po_appointment_transitions_total`, once the change has committed (never for a rolled-back one)."""
    counter = APPOINTMENT_TRANSITIONS.labels(_status(before), _status(after))

    async def count() -> None:
        counter.inc()

    after_commit(session, count)


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


def _publish(session: AsyncSession, appointment: Appointment, event_type: str) -> dict[str, Any]:
    """Tell both parties' sockets after the commit; the appointment's REST shape, for webhooks too."""
    data = to_json(appointment)
    events.publish_after_commit(session, [appointment.client_id, appointment.staff_id], event_type, data=data)
    return data


async def compare_and_swap(
    session: AsyncSession,
    appointment: Appointment,
    values: dict[str, Any],
    *,
    expected: str | None,
    sequence: int | None = None,
) -> Appointment | None:
    """`UPDATE ... WHERE id = :id [AND status = :expected] [AND sequence = :sequence] RETURNING`;
    None when the status (or the version) moved meanwhile."""
    query = update(Appointment).where(Appointment.id == appointment.id)
    if expected is not None:
        query = query.where(Appointment.status == expected)
    if sequence is not None:
        query = query.where(Appointment.sequence == sequence)
    query = query.values(**values, updated_at=func.now()).returning(Appointment)
    result = await session.execute(query.execution_options(populate_existing=True, synchronize_session=False))
    return result.scalar_one_or_none()


async def record_change(
    session: AsyncSession, actor: User | None, appointment: Appointment, action: str, before: dict, event_type: str
) -> None:
    await audit.record(
        session,
        actor_id=actor.id if actor else None,
        action=action,
        entity_type="appointment",
        entity_id=appointment.id,
        before=before,
        after=audit.snapshot(appointment),
    )
    availability.invalidate_after_commit(session, appointment.staff_id)
    data = _publish(session, appointment, event_type)
    if webhook_event := webhooks.EVENT_OF_ACTION.get(action):
        await webhooks.emit(session, webhook_event, [webhooks.Event(data, webhooks.appointment_people(appointment))])
    if before.get("status") != _status(appointment.status):
        count_transition(session, before["status"], appointment.status)
