"""Manage links: a client views, cancels or reschedules one appointment from an email, without signing in.

The token (`app.utils.manage_tokens`) names the appointment, its client and the actions it allows.
It lets in while the appointment is live (pending or confirmed), has not ended — neither at the end
the token was issued for nor at its current end (a link does not follow a move to a later time: the
reschedule email and the reminders carry a fresh one) — and still belongs to that client, whose
account is open.

Past that door the request is the client's own: the same functions a signed-in client calls
(`booking.cancel`, `booking.update`, `availability.find_slots`) with the client as the actor, so
the cut-off, availability, minimum notice, horizon, audit entry, emails and events are the same.
A link never carries more than a client's rights: an admin who is also the client still meets the
cut-off through it.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import AppError, CancellationWindowClosed, Forbidden, NotFound
from app.models import LIVE_STATUSES, Appointment, Role, Service, StaffProfile, User
from app.schemas.appointment import AppointmentOut
from app.schemas.availability import render, render_seats
from app.schemas.manage import (
    ActionState,
    ManageActions,
    ManageAvailabilityQuery,
    ManagedAppointment,
    ManagedService,
    ManagedStaff,
)
from app.services.booking import booking, cancellation
from app.services.scheduling import availability
from app.utils import manage_tokens
from app.utils.manage_tokens import Action, ManageClaims
from app.utils.time import timestamp, utcnow


class ManageLinkInvalid(NotFound):
    """Not a token of ours, tampered with, signed with a retired key, or for a closed account."""

    code, title = "manage_link_invalid", "This link is not valid"


class ManageLinkExpired(AppError):
    status, code, title = 410, "manage_link_expired", "This link has expired"


# Why a link for an appointment that is not over has expired: the page should not say "it is over".
MOVED_ON = (
    "This link was for an earlier time of this appointment, which has been moved since: "
    "use the link in the latest email about it, or sign in"
)


class AppointmentClosed(AppError):
    status, code, title = 410, "appointment_closed", "This appointment is cancelled or over"
    appointment_status: str  # cancelled, completed or no_show


class ActionNotInLink(Forbidden):
    code, title = "manage_action_not_allowed", "This link does not allow this"


@dataclass(frozen=True)
class Link:
    """A verified token and the client it speaks for."""

    token: str
    claims: ManageClaims
    client: User


@dataclass(frozen=True)
class _AsClient:
    """The client held to a client's rules whatever their role (see `cancellation.check_client_window`)."""

    id: uuid.UUID
    role: Role = Role.user


async def open_link(session: AsyncSession, token: str) -> Link:
    """The link's client, if the token is ours and their account is open; 404 `manage_link_invalid` else."""
    claims = manage_tokens.read(token)
    if claims is None:
        raise ManageLinkInvalid()
    client = await session.get(User, claims.client_id)
    if client is None or not client.is_active or client.deleted_at is not None:
        raise ManageLinkInvalid()
    return Link(token, claims, client)


async def appointment_of(session: AsyncSession, link: Link, action: Action) -> Appointment:
    """The appointment, if the link still lets this action in (fresh from the database)."""
    if action not in link.claims.actions:
        raise ActionNotInLink(f"This link does not allow you to {action.name} the appointment")
    appointment = await session.get(Appointment, link.claims.appointment_id, populate_existing=True)
    if appointment is None or appointment.client_id != link.claims.client_id:
        raise ManageLinkInvalid()
    if appointment.status not in LIVE_STATUSES:
        raise AppointmentClosed(f"This appointment is {appointment.status}", appointment_status=appointment.status)
    now = utcnow()
    if now >= appointment.ends_at:
        raise ManageLinkExpired("The appointment is over")
    if now >= link.claims.expires_at:  # not over: moved later since this link was mailed
        raise ManageLinkExpired(MOVED_ON)
    return appointment


def _client_window(link: Link, appointment: Appointment, new_start: datetime | None = None) -> None:
    cancellation.check_client_window(_AsClient(link.client.id), appointment, appointment.starts_at, new_start=new_start)


def _state(link: Link, appointment: Appointment, action: Action) -> ActionState:
    """Whether `action` would pass the link's and the cut-off's checks right now."""
    try:
        if action not in link.claims.actions:
            raise ActionNotInLink()
        if action is not Action.view:
            _client_window(link, appointment)
    except (ActionNotInLink, CancellationWindowClosed) as refusal:
        return ActionState(allowed=False, code=refusal.code, reason=refusal.detail)
    return ActionState(allowed=True, code=None, reason=None)


async def view(session: AsyncSession, link: Link) -> ManagedAppointment:
    appointment = await appointment_of(session, link, Action.view)
    service = await session.get(Service, appointment.service_id)
    staff = await session.get(User, appointment.staff_id)
    profile = await session.get(StaffProfile, appointment.staff_id)
    assert service is not None and staff is not None
    return ManagedAppointment(
        appointment=AppointmentOut.model_validate(appointment),
        service=ManagedService(id=service.id, name=service.name, duration_minutes=service.duration_minutes),
        staff=ManagedStaff(id=staff.id, full_name=staff.full_name),
        timezone=profile.timezone if profile is not None else staff.timezone,
        client_timezone=link.client.timezone,
        change_deadline=appointment.starts_at - timedelta(hours=get_settings().cancellation_min_notice_hours),
        actions=ManageActions(**{action.name: _state(link, appointment, action) for action in Action}),
    )


async def cancel(session: AsyncSession, link: Link, reason: str | None) -> Appointment:
    """`POST /appointments/{id}/cancel` as the client."""
    appointment = await appointment_of(session, link, Action.cancel)
    _client_window(link, appointment)
    return await booking.cancel(session, link.client, appointment.id, reason)


async def reschedule(session: AsyncSession, link: Link, starts_at: datetime, sequence: int | None) -> Appointment:
    """`PATCH /appointments/{id}` with `starts_at` (and `sequence`) as the client."""
    appointment = await appointment_of(session, link, Action.reschedule)
    _client_window(link, appointment, new_start=starts_at)
    return await booking.update(session, link.client, appointment.id, {"starts_at": starts_at, "sequence": sequence})


async def free_slots(session: AsyncSession, link: Link, query: ManageAvailabilityQuery) -> str:
    """The starts a reschedule through this link would accept: the appointment's service and staff
    member, its own slot free, none inside the client's cut-off. The `GET /availability` shape."""
    appointment = await appointment_of(session, link, Action.reschedule)
    start, end = query.start_at, query.end_at
    earliest = timestamp(cancellation.cut_off(), ceil=True)
    service = await session.get(Service, appointment.service_id)
    if service is not None and service.capacity > 1:  # a seat: into any session with seats left
        seats = await availability.find_seat_slots(
            session, service.id, start, end, appointment.staff_id, exclude_appointments=(appointment.id,)
        )
        return render_seats([slot for slot in seats if slot.start >= earliest], start, end, query.zone)
    slots = await availability.find_slots(
        session,
        appointment.service_id,
        start,
        end,
        appointment.staff_id,
        exclude_appointments=(appointment.id,),
    )
    return render([slot for slot in slots if slot.start >= earliest], start, end, query.zone)
