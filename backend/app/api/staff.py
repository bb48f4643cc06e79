"""Staff: public profiles, and each staff member's weekly hours, date overrides and time off."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import CurrentUser, DbSession, Limit, Offset
from app.api.problems import problem_responses
from app.errors import Forbidden, NotFound
from app.schemas.inputs import Day, Instant
from app.schemas.staff import (
    CoveredAppointment,
    OverrideIn,
    OverrideOut,
    OverridePage,
    OverrideSaved,
    Schedule,
    ScheduleSaved,
    StaffLimits,
    StaffOut,
    StaffPage,
    TimeOffCreated,
    TimeOffIn,
    TimeOffOut,
    TimeOffPage,
)
from app.services.scheduling import catalogue, schedules, staff_limits
from app.services.scheduling.schedules import InvalidInterval, OverlappingIntervals

router = APIRouter(prefix="/staff", tags=["staff"])

# Only that staff member or an admin; a signed-in user who is neither gets 403 (profiles are public anyway).
CALENDAR_ERRORS = problem_responses(NotFound, Forbidden)
INTERVAL_ERRORS = problem_responses(NotFound, Forbidden, InvalidInterval, OverlappingIntervals)


@router.get("", operation_id="staff-list", summary="List staff")
async def list_staff(
    session: DbSession,
    service_id: Annotated[uuid.UUID | None, Query(description="Only people who provide this service")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> StaffPage:
    """Active staff members by name, with the services each provides."""
    rows, total = await catalogue.list_staff(session, service_id=service_id, limit=limit, offset=offset)
    return StaffPage(items=[StaffOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{staff_id}", operation_id="staff-get", summary="Get a staff member", responses=problem_responses(NotFound)
)
async def get(staff_id: uuid.UUID, session: DbSession) -> StaffOut:
    """A staff member's public profile; the id is their user id."""
    return StaffOut.model_validate(await catalogue.get_staff_profile(session, staff_id))


@router.get(
    "/{staff_id}/schedule", operation_id="staff-get-schedule", summary="Get weekly hours", responses=CALENDAR_ERRORS
)
async def get_schedule(staff_id: uuid.UUID, user: CurrentUser, session: DbSession) -> Schedule:
    """Weekly working hours in the staff member's own time zone (weekday 0 = Monday)."""
    return Schedule.model_validate(await schedules.get_schedule(session, user, staff_id))


@router.put(
    "/{staff_id}/schedule",
    operation_id="staff-replace-schedule",
    summary="Replace weekly hours",
    responses=INTERVAL_ERRORS,
)
async def replace_schedule(staff_id: uuid.UUID, body: Schedule, user: CurrentUser, session: DbSession) -> ScheduleSaved:
    """Replace the whole week (overlapping intervals are 422); lists live bookings left outside the hours."""
    week, outside = await schedules.replace_schedule(session, user, staff_id, body)
    covered = [CoveredAppointment.model_validate(a) for a in outside]
    return ScheduleSaved.model_validate({**week, "conflicting_appointments": covered})


@router.get(
    "/{staff_id}/limits", operation_id="staff-get-limits", summary="Get booking limits", responses=CALENDAR_ERRORS
)
async def get_limits(staff_id: uuid.UUID, user: CurrentUser, session: DbSession) -> StaffLimits:
    """The staff member's booking limits (appointments per local day)."""
    return StaffLimits.model_validate(await staff_limits.get_limits(session, user, staff_id))


@router.put(
    "/{staff_id}/limits",
    operation_id="staff-replace-limits",
    summary="Replace booking limits",
    responses=CALENDAR_ERRORS,
)
async def replace_limits(staff_id: uuid.UUID, body: StaffLimits, user: CurrentUser, session: DbSession) -> StaffLimits:
    """Set the staff member's booking limits; they hold from the next booking on (existing ones stay)."""
    return StaffLimits.model_validate(await staff_limits.replace_limits(session, user, staff_id, body))


@router.get(
    "/{staff_id}/time-off", operation_id="staff-list-time-off", summary="List time off", responses=CALENDAR_ERRORS
)
async def list_time_off(
    staff_id: uuid.UUID,
    user: CurrentUser,
    session: DbSession,
    start: Annotated[Instant | None, Query(alias="from", description="Blocks ending after this")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="Blocks starting before this")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> TimeOffPage:
    """Time-off blocks, earliest first."""
    rows, total = await schedules.list_time_off(
        session, user, staff_id, start=start, end=end, limit=limit, offset=offset
    )
    return TimeOffPage(items=[TimeOffOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.post(
    "/{staff_id}/time-off",
    operation_id="staff-create-time-off",
    status_code=status.HTTP_201_CREATED,
    summary="Add time off",
    responses=INTERVAL_ERRORS,
)
async def create_time_off(
    staff_id: uuid.UUID, body: TimeOffIn, user: CurrentUser, session: DbSession
) -> TimeOffCreated:
    """Block time; the answer lists the pending or confirmed bookings inside it (they are not cancelled)."""
    row, covered = await schedules.create_time_off(session, user, staff_id, body)
    return TimeOffCreated(
        time_off=TimeOffOut.model_validate(row),
        conflicting_appointments=[CoveredAppointment.model_validate(a) for a in covered],
    )


@router.delete(
    "/{staff_id}/time-off/{time_off_id}",
    operation_id="staff-delete-time-off",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove time off",
    responses=CALENDAR_ERRORS,
)
async def delete_time_off(staff_id: uuid.UUID, time_off_id: uuid.UUID, user: CurrentUser, session: DbSession) -> None:
    """Remove a time-off block; its time becomes bookable again."""
    await schedules.delete_time_off(session, user, staff_id, time_off_id)


@router.get(
    "/{staff_id}/overrides",
    operation_id="staff-list-overrides",
    summary="List date overrides",
    responses=CALENDAR_ERRORS,
)
async def list_overrides(
    staff_id: uuid.UUID,
    user: CurrentUser,
    session: DbSession,
    first: Annotated[Day | None, Query(alias="from", description="First local date, inclusive")] = None,
    last: Annotated[Day | None, Query(alias="to", description="Last local date, inclusive")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> OverridePage:
    """Date-specific hours, by date."""
    rows, total = await schedules.list_overrides(
        session, user, staff_id, first=first, last=last, limit=limit, offset=offset
    )
    return OverridePage(items=[OverrideOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.post(
    "/{staff_id}/overrides",
    operation_id="staff-set-override",
    status_code=status.HTTP_201_CREATED,
    summary="Set a date override",
    responses={200: {"model": OverrideSaved, "description": "An existing override for that date was replaced"}}
    | INTERVAL_ERRORS,
)
async def set_override(
    staff_id: uuid.UUID, body: OverrideIn, user: CurrentUser, session: DbSession, response: Response
) -> OverrideSaved:
    """Set one local date's hours (201), replacing any earlier override for that date (200); [] closes the day."""
    row, created, outside = await schedules.set_override(session, user, staff_id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    covered = [CoveredAppointment.model_validate(a) for a in outside]
    return OverrideSaved(id=row.id, date=row.date, intervals=row.intervals, conflicting_appointments=covered)


@router.delete(
    "/{staff_id}/overrides/{override_id}",
    operation_id="staff-delete-override",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a date override",
    responses=CALENDAR_ERRORS,
)
async def delete_override(staff_id: uuid.UUID, override_id: uuid.UUID, user: CurrentUser, session: DbSession) -> None:
    """Remove a date override; the weekly hours apply to that date again."""
    await schedules.delete_override(session, user, staff_id, override_id)
