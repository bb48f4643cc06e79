"""Booking: create, reschedule, confirm, cancel, complete, no-show — the rules of API.md's state machine.

`pending` -> `confirmed` -> `completed` | `no_show`; `pending` | `confirmed` -> `cancelled`.
Clients change their own appointments only until `CANCELLATION_MIN_NOTICE_HOURS` before the
start; its staff member and admins any time. The building blocks live in `appointments.py`.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import (
    AppointmentNotStarted,
    CancellationWindowClosed,
    EmailNotVerified,
    Forbidden,
    InvalidTransition,
    NotFound,
    SlotNotOffered,
    SlotUnavailable,
)
from app.models import Appointment, AppointmentStatus, Role, Service, User
from app.schemas.common import iso_z
from app.services import audit
from app.services.booking import appointments, series
from app.services.booking.appointments import LIVE, compare_and_swap, get_visible, handles, record_change
from app.services.messaging import notifications, reminders
from app.services.scheduling import availability
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
    if not actor.is_verified:
        raise EmailNotVerified("Verify your email address before booking")
    client = await _client_for(session, actor, data.client_id, data.staff_id)
    service = await availability.get_bookable_service(session, data.service_id)
    if data.staff_id not in await availability.service_staff_ids(session, service.id):
        raise SlotNotOffered("This staff member does not provide this service")
    if data.recurrence is not None:
        booked = await series.book(
            session, actor, client, service, data.staff_id, data.recurrence.rrule, data.starts_at, notes=data.notes
        )
        return booked[0]
    starts_at = data.starts_at.astimezone(UTC)
    appointments.ensure_within_horizon(service, starts_at)
    await appointments.ensure_offered(session, service, data.staff_id, [starts_at])
    appointment = appointments.new_appointment(service, client, data.staff_id, starts_at, notes=data.notes)
    return (await appointments.insert_all(session, actor, [appointment]))[0]


def _check_client_window(actor: User, appointment: Appointment) -> None:
    """Clients may change or cancel only until the cut-off before the start."""
    if handles(actor, appointment):
        return
    hours = get_settings().cancellation_min_notice_hours
    if utcnow() > appointment.starts_at - timedelta(hours=hours):
        raise CancellationWindowClosed(
            f"Appointments can be changed or cancelled up to {hours} hours before they start; please contact us"
        )


async def update(session: AsyncSession, actor: User, appointment_id: uuid.UUID, changes: dict[str, Any]) -> Appointment:
    """`notes` (any time) and/or `starts_at` (a reschedule, with the same checks as booking)."""
    appointment = await get_visible(session, actor, appointment_id)
    if "notes" in changes and changes["notes"] != appointment.notes:
        before = audit.snapshot(appointment)
        updated = await compare_and_swap(session, appointment, {"notes": changes["notes"]}, expected=None)
        assert updated is not None
        await record_change(session, actor, updated, "appointment.update", before, "appointment.updated")
        appointment = updated
    if changes.get("starts_at") is not None:
        appointment = await reschedule(session, actor, appointment, changes["starts_at"].astimezone(UTC))
    return appointment


async def reschedule(session: AsyncSession, actor: User, appointment: Appointment, starts_at: datetime) -> Appointment:
    if appointment.status not in LIVE:
        raise InvalidTransition(f"A {appointment.status} appointment cannot be rescheduled")
    _check_client_window(actor, appointment)
    if starts_at == appointment.starts_at:
        return appointment
    service = await session.get(Service, appointment.service_id)
    assert service is not None
    appointments.ensure_within_horizon(service, starts_at)
    await appointments.ensure_offered(session, service, appointment.staff_id, [starts_at], exclude=appointment.id)
    before = audit.snapshot(appointment)
    previous_start = appointment.starts_at
    blocked_from, blocked_until = appointments.blocked_range(service, starts_at)
    values = {
        "starts_at": starts_at,
        "ends_at": starts_at + timedelta(minutes=service.duration_minutes),
        "blocked_from": blocked_from,
        "blocked_until": blocked_until,
        "sequence": Appointment.sequence + 1,
    }
    try:
        async with session.begin_nested():
            updated = await compare_and_swap(session, appointment, values, expected=appointment.status)
    except IntegrityError as exc:
        if not appointments.is_double_booking(exc):
            raise
        raise SlotUnavailable(conflicts=[iso_z(starts_at)]) from None
    if updated is None:
        raise InvalidTransition("The appointment changed meanwhile; reload it")
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
    """Its staff member or an admin moves the status by compare-and-swap; anyone else who may see it gets 403."""
    appointment = await get_visible(session, actor, appointment_id)
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
    appointment = await get_visible(session, actor, appointment_id)
    if appointment.status not in LIVE:
        raise InvalidTransition(f"A {appointment.status} appointment cannot be cancelled")
    _check_client_window(actor, appointment)
    cancelled = await appointments.cancel_one(session, actor, appointment, reason)
    await notifications.cancelled(session, [cancelled])
    return cancelled


async def calendar_file(session: AsyncSession, actor: User, appointment_id: uuid.UUID) -> str:
    """The appointment as an RFC 5545 file (METHOD:PUBLISH), as the caller would see it in their calendar."""
    appointment = await get_visible(session, actor, appointment_id)
    return await notifications.calendar_for(session, appointment, viewer=actor, method="PUBLISH")
