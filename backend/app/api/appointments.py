"""Appointments: book, list, read, reschedule, confirm, cancel, complete, no-show, `.ics`."""

import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse

from app.api.deps import CurrentUser, DbSession, Limit, Offset
from app.api.idempotent import IdempotentChange
from app.api.problems import problem_responses
from app.errors import (
    AlreadyBooked,
    AppointmentChanged,
    AppointmentNotStarted,
    CancellationWindowClosed,
    EmailNotVerified,
    Forbidden,
    InvalidRecurrence,
    InvalidTransition,
    NotFound,
    SessionFull,
    SlotNotOffered,
    SlotUnavailable,
)
from app.models import AppointmentStatus
from app.schemas.appointment import (
    AppointmentCreate,
    AppointmentOut,
    AppointmentPage,
    AppointmentUpdate,
    Attendee,
    AttendeeList,
    CancelRequest,
)
from app.schemas.inputs import Instant
from app.services.booking import booking, seats, single
from app.services.booking.appointments import get_visible, list_appointments
from app.services.booking.limits import LIMIT_ERRORS
from app.services.scheduling.resources import ResourceUnavailable

router = APIRouter(prefix="/appointments", tags=["appointments"])

READ_ERRORS = problem_responses(NotFound)
ICS_HEADERS = {"Content-Disposition": {"description": "`attachment; filename=...`", "schema": {"type": "string"}}}
CHANGE_ERRORS = problem_responses(
    NotFound, Forbidden, InvalidTransition, CancellationWindowClosed, AppointmentNotStarted
)
RESCHEDULE_ERRORS = problem_responses(
    NotFound,
    Forbidden,
    InvalidTransition,
    CancellationWindowClosed,
    SlotUnavailable,
    ResourceUnavailable,
    SlotNotOffered,
    AppointmentChanged,
    SessionFull,
    AlreadyBooked,
    *LIMIT_ERRORS,
)


@router.post(
    "",
    operation_id="appointments-create",
    status_code=status.HTTP_201_CREATED,
    response_model=AppointmentOut,
    summary="Book an appointment",
    responses=problem_responses(
        Forbidden,
        EmailNotVerified,
        NotFound,
        SlotUnavailable,
        ResourceUnavailable,
        SlotNotOffered,
        InvalidRecurrence,
        SessionFull,
        AlreadyBooked,
        *LIMIT_ERRORS,
    ),
)
async def create(
    body: AppointmentCreate, user: CurrentUser, session: DbSession, idem: IdempotentChange
) -> JSONResponse:
    """Book a free slot, or a recurring series (all or nothing; the answer is its first occurrence)."""
    if body.recurrence is None:
        return await idem.respond_fused(partial(single.book, session, user, body))
    return await idem.respond(201, lambda: booking.create(session, user, body))


@router.get("", operation_id="appointments-list", summary="List appointments")
async def list_visible(
    user: CurrentUser,
    session: DbSession,
    status: AppointmentStatus | None = None,
    from_: Annotated[Instant | None, Query(alias="from", description="Starting at or after")] = None,
    to: Annotated[Instant | None, Query(description="Starting before")] = None,
    staff_id: uuid.UUID | None = None,
    client_id: uuid.UUID | None = None,
    series_id: uuid.UUID | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AppointmentPage:
    """My appointments (as client or as staff member; admins see all), by start time."""
    rows, total = await list_appointments(
        session,
        user,
        status=status,
        start=from_,
        end=to,
        staff_id=staff_id,
        client_id=client_id,
        series_id=series_id,
        limit=limit,
        offset=offset,
    )
    return AppointmentPage(
        items=[AppointmentOut.model_validate(a) for a in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{appointment_id}.ics",
    operation_id="appointments-get-ics",
    response_class=Response,
    summary="Download as a calendar file",
    responses={200: {"content": {"text/calendar": {"schema": {"type": "string"}}}, "headers": ICS_HEADERS}}
    | READ_ERRORS,
)
async def get_ics(appointment_id: uuid.UUID, user: CurrentUser, session: DbSession) -> Response:
    """The appointment as an RFC 5545 `.ics` file."""
    content = await booking.calendar_file(session, user, appointment_id)
    return Response(
        content,
        media_type="text/calendar; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="appointment-{appointment_id}.ics"'},
    )


@router.get("/{appointment_id}", operation_id="appointments-get", summary="Get an appointment", responses=READ_ERRORS)
async def get(appointment_id: uuid.UUID, user: CurrentUser, session: DbSession) -> AppointmentOut:
    """One appointment: its client, its staff member and admins may see it."""
    return AppointmentOut.model_validate(await get_visible(session, user, appointment_id))


@router.get(
    "/{appointment_id}/attendees",
    operation_id="appointments-attendees",
    summary="List a group session's attendees",
    responses=problem_responses(NotFound, Forbidden),
)
async def attendees(appointment_id: uuid.UUID, user: CurrentUser, session: DbSession) -> AttendeeList:
    """Every live seat of this appointment's group session with its client (an appointment that is
    not a seat lists itself while live): its staff member and admins only, 403 for its client."""
    appointment, service, seated = await seats.attendees(session, user, appointment_id)
    return AttendeeList(
        session_key=appointment.session_key,
        capacity=service.capacity,
        seats_taken=len(seated),
        attendees=[
            Attendee(
                appointment_id=seat.id,
                client_id=client.id,
                full_name=client.full_name,
                email=client.email,
                status=seat.status,
                seat=seat.seat,
            )
            for seat, client in seated
        ],
    )


@router.patch(
    "/{appointment_id}",
    operation_id="appointments-update",
    response_model=AppointmentOut,
    summary="Reschedule or edit",
    responses=RESCHEDULE_ERRORS,
)
async def update(
    appointment_id: uuid.UUID, body: AppointmentUpdate, user: CurrentUser, session: DbSession, idem: IdempotentChange
) -> JSONResponse:
    """Move to a new `starts_at` (checked like a new booking) and/or change the `notes`."""
    changes = body.model_dump(include=body.model_fields_set)
    return await idem.respond(200, lambda: booking.update(session, user, appointment_id, changes))


@router.post(
    "/{appointment_id}/confirm",
    operation_id="appointments-confirm",
    response_model=AppointmentOut,
    summary="Confirm",
    responses=CHANGE_ERRORS,
)
async def confirm(
    appointment_id: uuid.UUID, user: CurrentUser, session: DbSession, idem: IdempotentChange
) -> JSONResponse:
    """Confirm a pending appointment (its staff member or an admin)."""
    return await idem.respond(200, lambda: booking.confirm(session, user, appointment_id))


@router.post(
    "/{appointment_id}/cancel",
    operation_id="appointments-cancel",
    response_model=AppointmentOut,
    summary="Cancel",
    responses=problem_responses(
        NotFound, Forbidden, InvalidTransition, CancellationWindowClosed, AppointmentNotStarted, AppointmentChanged
    ),
)
async def cancel(
    appointment_id: uuid.UUID,
    user: CurrentUser,
    session: DbSession,
    idem: IdempotentChange,
    body: CancelRequest | None = None,
) -> JSONResponse:
    """Cancel: the client until the cut-off before the start, its staff member and admins any time."""
    reason = body.reason if body else None
    return await idem.respond(200, lambda: booking.cancel(session, user, appointment_id, reason))


@router.post(
    "/{appointment_id}/complete",
    operation_id="appointments-complete",
    response_model=AppointmentOut,
    summary="Mark completed",
    responses=CHANGE_ERRORS,
)
async def complete(
    appointment_id: uuid.UUID, user: CurrentUser, session: DbSession, idem: IdempotentChange
) -> JSONResponse:
    """Record that a confirmed appointment took place (once it has started)."""
    return await idem.respond(200, lambda: booking.complete(session, user, appointment_id))


@router.post(
    "/{appointment_id}/no-show",
    operation_id="appointments-no-show",
    response_model=AppointmentOut,
    summary="Mark no-show",
    responses=CHANGE_ERRORS,
)
async def no_show(
    appointment_id: uuid.UUID, user: CurrentUser, session: DbSession, idem: IdempotentChange
) -> JSONResponse:
    """Record that the client did not come (once the appointment has started)."""
    return await idem.respond(200, lambda: booking.no_show(session, user, appointment_id))
