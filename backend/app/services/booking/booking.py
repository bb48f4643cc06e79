"""Booking: create, reschedule, confirm, cancel, complete, no-show — the rules of API.md's state machine.

`pending` -> `confirmed` -> `completed` | `no_show`; `pending` | `confirmed` -> `cancelled`.
Clients change their own appointments only until `CANCELLATION_MIN_NOTICE_HOURS` before the
start, and never into that cut-off (`cancellation.py`); its staff member and admins any time. Every
change takes the staff member's calendar lock first. The building blocks live in `appointments.py`.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import (
    AppError,
    AppointmentChanged,
    AppointmentNotStarted,
    EmailNotVerified,
    Forbidden,
    InvalidTransition,
    NotFound,
    SlotNotOffered,
    SlotUnavailable,
)
from app.metrics import BOOKING_REFUSALS
from app.models import LIVE_STATUSES, Appointment, AppointmentStatus, Role, Service, User
from app.schemas.common import iso_z
from app.services import audit
from app.services.booking import appointments, cancellation, limits, resources, seats, series
from app.services.booking.appointments import (
    can_see,
    compare_and_swap,
    get_visible,
    handles,
    lock_calendar,
    record_change,
)
from app.services.messaging import notifications, reminders
from app.services.scheduling.resources import ResourceUnavailable
from app.utils.time import utcnow


async def _client_for(session: AsyncSession, actor: User, client_id: uuid.UUID | None, staff_id: uuid.UUID) -> User:
    if client_id is None or client_id == actor.id:
        return actor
    if actor.role != Role.admin and not (actor.role == Role.staff and staff_id == actor.id):
        raise Forbidden("Only admins, and staff in their own calendar, may book for someone else")
    client = await session.get(User, client_id)
    if client is None or not client.is_active or client.deleted_at is not None:
        raise NotFound("No such client")
    return client


async def create(session: AsyncSession, actor: User, data: Any) -> Appointment:
    """Book one appointment, or a whole recurring series (answering its first occurrence)."""
    try:
        return await _create(session, actor, data)
    except AppError as refused:
        BOOKING_REFUSALS.labels(refused.code).inc()
        raise


async def _create(session: AsyncSession, actor: User, data: Any) -> Appointment:
    if not actor.is_verified:
        raise EmailNotVerified("Verify your email address before booking")
    # Locked first (the client's lock, if limits hold them, then the calendar's): everything below
    # (the caller, the service, its providers, hours, time off, the counts) is read fresh.
    held = await limits.held_to(session, actor, data.client_id or actor.id, data.service_id, data.staff_id)
    await limits.lock_client(session, held)
    locked = await appointments.lock_for_booking(
        session, actor, data.service_id, data.staff_id, shared=held.shared_calendar
    )
    client = await _client_for(session, actor, data.client_id, data.staff_id)
    service, staff = locked.service, locked.staff
    if service is None:
        raise NotFound("No such service")
    if not staff:
        raise SlotNotOffered("This staff member does not provide this service")
    if data.recurrence is not None:
        booked = await series.book(
            session,
            actor,
            client,
            service,
            data.staff_id,
            data.recurrence.rrule,
            data.starts_at,
            notes=data.notes,
            held=held,
        )
        return booked[0]
    starts_at = data.starts_at.astimezone(UTC)
    appointments.ensure_within_horizon(service, starts_at)
    seat = await seats.claim(session, service, client.id, data.staff_id, [starts_at])
    await appointments.ensure_offered(session, service, data.staff_id, [starts_at], staff=staff, exclude=seat.exclude)
    await limits.check(session, held, service, data.staff_id, ZoneInfo(staff[data.staff_id]), [starts_at])
    appointment = seat.place(appointments.new_appointment(service, client, data.staff_id, starts_at, notes=data.notes))
    await resources.assign(session, service, [appointment])
    return (await appointments.insert_all(session, actor, [appointment]))[0]


async def update(session: AsyncSession, actor: User, appointment_id: uuid.UUID, changes: dict[str, Any]) -> Appointment:
    """`notes` (any time) and/or `starts_at` (a reschedule, with the same checks as booking), the
    latter conditional on `sequence` when the caller sends the version they saw."""
    moving = changes.get("starts_at") is not None
    appointment, held = await _locked_for_change(session, actor, appointment_id, moving=moving)
    if moving:
        seen = changes.get("sequence")
        if seen is not None and seen != appointment.sequence:
            raise AppointmentChanged("The appointment was changed since you last read it; reload it")
        appointment = await reschedule(session, actor, appointment, changes["starts_at"].astimezone(UTC), held)
    if "notes" in changes and changes["notes"] != appointment.notes:
        before = audit.snapshot(appointment)
        updated = await compare_and_swap(session, appointment, {"notes": changes["notes"]}, expected=None)
        assert updated is not None
        await record_change(session, actor, updated, "appointment.update", before, "appointment.updated")
        appointment = updated
    return appointment


async def _locked(session: AsyncSession, actor: User, appointment_id: uuid.UUID) -> Appointment:
    return (await _locked_for_change(session, actor, appointment_id))[0]


async def _locked_for_change(
    session: AsyncSession, actor: User, appointment_id: uuid.UUID, *, moving: bool = False
) -> tuple[Appointment, limits.Held]:
    """The appointment as this request first read it (its version is what a reschedule compares
    against), with its staff member's calendar locked and the caller re-read; `moving` it, the
    limits its client is held to as well (their lock taken first)."""
    appointment = await get_visible(session, actor, appointment_id)
    held = limits.NOT_HELD
    if moving:
        held = await limits.held_to(session, actor, appointment.client_id, appointment.service_id, appointment.staff_id)
        await limits.lock_client(session, held)
    await lock_calendar(session, actor, appointment.staff_id, shared=held.shared_calendar)
    if not can_see(actor, appointment):
        raise NotFound("No such appointment")
    return appointment, held


async def reschedule(
    session: AsyncSession,
    actor: User,
    appointment: Appointment,
    starts_at: datetime,
    held: limits.Held = limits.NOT_HELD,
) -> Appointment:
    """Move a live appointment: a compare-and-swap on its version (`sequence`), so of two
    simultaneous reschedules one wins and the other is 409 `appointment_changed`. `held`: the
    limits the move counts against (the appointment itself left out of the counts)."""
    if appointment.status not in LIVE_STATUSES:
        raise InvalidTransition(f"A {appointment.status} appointment cannot be rescheduled")
    cancellation.check_client_window(actor, appointment, appointment.starts_at, new_start=starts_at)
    if starts_at == appointment.starts_at:
        return appointment
    service = await session.get(Service, appointment.service_id)
    assert service is not None
    appointments.ensure_within_horizon(service, starts_at)
    seat = await seats.claim(session, service, appointment.client_id, appointment.staff_id, [starts_at])
    excluded = {appointment.id, *seat.exclude}
    await appointments.ensure_offered(session, service, appointment.staff_id, [starts_at], exclude=excluded)
    if held != limits.NOT_HELD:
        zone = await series.staff_zone(session, appointment.staff_id)
        await limits.check(session, held, service, appointment.staff_id, zone, [starts_at], exclude=appointment.id)
    before = audit.snapshot(appointment)
    previous_start = appointment.starts_at
    blocked_from, blocked_until = appointments.blocked_range(service, starts_at)
    # The new time's session (a seat moves to another), so a seat takes that session's room.
    moved = Appointment(
        starts_at=starts_at, blocked_from=blocked_from, blocked_until=blocked_until, **seat.values(starts_at)
    )
    await resources.assign(session, service, [moved], exclude=appointment.id, keep=appointment.resource_id)
    values = {
        "starts_at": starts_at,
        "ends_at": starts_at + timedelta(minutes=service.duration_minutes),
        "blocked_from": blocked_from,
        "blocked_until": blocked_until,
        "sequence": appointment.sequence + 1,
        **seat.values(starts_at),
        "resource_id": moved.resource_id,
    }
    try:
        async with session.begin_nested():
            updated = await compare_and_swap(
                session, appointment, values, expected=appointment.status, sequence=appointment.sequence
            )
    except IntegrityError as exc:
        appointments.refuse_duplicate_seat(exc, starts_at)
        if not appointments.is_double_booking(exc):
            raise
        if resources.is_resource_clash(exc):
            raise ResourceUnavailable(conflicts=[iso_z(starts_at)]) from None
        raise SlotUnavailable(conflicts=[iso_z(starts_at)]) from None
    if updated is None:
        raise AppointmentChanged("The appointment was changed meanwhile (moved, confirmed or cancelled); reload it")
    await reminders.schedule(session, updated)
    await record_change(session, actor, updated, "appointment.reschedule", before, "appointment.updated")
    await notifications.rescheduled(session, updated, previous_start)
    return updated


async def _transition(
    session: AsyncSession,
    actor: User,
    appointment_id: uuid.UUID,
    *,
    allowed_from: tuple[AppointmentStatus, ...],
    to: AppointmentStatus,
    action: str,
    values: dict[str, Any] | None = None,
    started: bool = False,
) -> Appointment:
    """Its staff member or an admin (by their current role) moves the status by compare-and-swap;
    anyone else who may see it gets 403."""
    appointment = await _locked(session, actor, appointment_id)
    if not handles(actor, appointment):
        raise Forbidden("Only its staff member or an admin can do this")
    if appointment.status not in allowed_from:
        raise InvalidTransition(f"A {appointment.status} appointment cannot become {to.value}")
    if started and appointment.starts_at > utcnow():
        raise AppointmentNotStarted("This can be recorded only once the appointment has started")
    before = audit.snapshot(appointment)
    updated = await compare_and_swap(
        session, appointment, {"status": to.value, **(values or {})}, expected=appointment.status
    )
    if updated is None:
        raise InvalidTransition("The appointment changed meanwhile; reload it")
    await record_change(session, actor, updated, action, before, "appointment.updated")
    return updated


async def confirm(session: AsyncSession, actor: User, appointment_id: uuid.UUID) -> Appointment:
    appointment = await _transition(
        session,
        actor,
        appointment_id,
        allowed_from=(AppointmentStatus.pending,),
        to=AppointmentStatus.confirmed,
        action="appointment.confirm",
        values={"sequence": Appointment.sequence + 1},
    )
    await reminders.schedule(session, appointment)
    await notifications.confirmed(session, appointment)
    return appointment


async def complete(session: AsyncSession, actor: User, appointment_id: uuid.UUID) -> Appointment:
    return await _finish(session, actor, appointment_id, AppointmentStatus.completed, "appointment.complete")


async def no_show(session: AsyncSession, actor: User, appointment_id: uuid.UUID) -> Appointment:
    return await _finish(session, actor, appointment_id, AppointmentStatus.no_show, "appointment.no_show")


async def _finish(
    session: AsyncSession, actor: User, appointment_id: uuid.UUID, to: AppointmentStatus, action: str
) -> Appointment:
    appointment = await _transition(
        session,
        actor,
        appointment_id,
        allowed_from=(AppointmentStatus.confirmed,),
        to=to,
        action=action,
        started=True,
    )
    await reminders.cancel(session, appointment)
    return appointment


async def cancel(session: AsyncSession, actor: User, appointment_id: uuid.UUID, reason: str | None) -> Appointment:
    appointment = await _locked(session, actor, appointment_id)
    if appointment.status not in LIVE_STATUSES:
        raise InvalidTransition(f"A {appointment.status} appointment cannot be cancelled")
    cancellation.check_client_window(actor, appointment, appointment.starts_at)
    (cancelled,) = await cancellation.cancel_with_emails(session, actor, [appointment], reason, as_read=True)
    return cancelled


async def calendar_file(session: AsyncSession, actor: User, appointment_id: uuid.UUID) -> str:
    """The appointment as an RFC 5545 file (METHOD:PUBLISH), as the caller would see it in their calendar."""
    appointment = await get_visible(session, actor, appointment_id)
    return await notifications.calendar_for(session, appointment, viewer=actor, method="PUBLISH")
