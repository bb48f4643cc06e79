"""A staff member's external calendars (ICS URLs, CalDAV calendars) whose busy time blocks their slots."""

import uuid

from fastapi import APIRouter, status

from app.api.deps import CurrentUser, DbSession, Limit, Offset
from app.api.problems import problem_responses
from app.errors import Forbidden, NotFound
from app.schemas.calendar_connection import (
    CalendarConnectionIn,
    CalendarConnectionOut,
    CalendarConnectionPage,
    CalendarConnectionPatch,
    CalendarSyncQueued,
)
from app.services.integrations import external_calendars
from app.services.integrations.external_calendars import (
    CalendarInactive,
    InvalidCalendarCredentials,
    InvalidCalendarUrl,
    TooManyCalendars,
)

router = APIRouter(prefix="/staff/{staff_id}/calendars", tags=["staff"])

ERRORS = problem_responses(NotFound, Forbidden)
INPUT_ERRORS = problem_responses(NotFound, Forbidden, InvalidCalendarUrl, InvalidCalendarCredentials)


@router.get("", operation_id="staff-list-calendars", summary="List external calendars", responses=ERRORS)
async def list_calendars(
    staff_id: uuid.UUID, user: CurrentUser, session: DbSession, limit: Limit = 50, offset: Offset = 0
) -> CalendarConnectionPage:
    """The staff member's external calendars with their sync state, oldest first."""
    rows, total = await external_calendars.list_connections(session, user, staff_id, limit=limit, offset=offset)
    items = [CalendarConnectionOut.model_validate(r) for r in rows]
    return CalendarConnectionPage(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "",
    operation_id="staff-connect-calendar",
    status_code=status.HTTP_201_CREATED,
    summary="Connect an external calendar",
    responses=INPUT_ERRORS | problem_responses(TooManyCalendars),
)
async def connect_calendar(
    staff_id: uuid.UUID, body: CalendarConnectionIn, user: CurrentUser, session: DbSession
) -> CalendarConnectionOut:
    """Connect an ICS URL or a CalDAV calendar; its busy time blocks slots after the first sync (queued now)."""
    row = await external_calendars.create_connection(session, user, staff_id, body)
    return CalendarConnectionOut.model_validate(row)


@router.get("/{calendar_id}", operation_id="staff-get-calendar", summary="Get an external calendar", responses=ERRORS)
async def get_calendar(
    staff_id: uuid.UUID, calendar_id: uuid.UUID, user: CurrentUser, session: DbSession
) -> CalendarConnectionOut:
    """One external calendar and its sync state (last success, last error, failures in a row, blocks)."""
    return CalendarConnectionOut.model_validate(
        await external_calendars.get_connection(session, user, staff_id, calendar_id)
    )


@router.patch(
    "/{calendar_id}",
    operation_id="staff-update-calendar",
    summary="Change an external calendar",
    responses=INPUT_ERRORS,
)
async def update_calendar(
    staff_id: uuid.UUID, calendar_id: uuid.UUID, body: CalendarConnectionPatch, user: CurrentUser, session: DbSession
) -> CalendarConnectionOut:
    """Change the URL, label, credentials or flags; turning it off removes its busy blocks. A sync is queued."""
    row = await external_calendars.update_connection(session, user, staff_id, calendar_id, body)
    return CalendarConnectionOut.model_validate(row)


@router.delete(
    "/{calendar_id}",
    operation_id="staff-delete-calendar",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Disconnect an external calendar",
    responses=ERRORS,
)
async def delete_calendar(staff_id: uuid.UUID, calendar_id: uuid.UUID, user: CurrentUser, session: DbSession) -> None:
    """Remove the connection, its stored credentials and its busy blocks; that time becomes bookable again."""
    await external_calendars.delete_connection(session, user, staff_id, calendar_id)


@router.post(
    "/{calendar_id}/sync",
    operation_id="staff-sync-calendar",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Sync an external calendar now",
    responses=ERRORS | problem_responses(CalendarInactive),
)
async def sync_calendar(
    staff_id: uuid.UUID, calendar_id: uuid.UUID, user: CurrentUser, session: DbSession
) -> CalendarSyncQueued:
    """Queue a sync on the worker; poll the calendar for `last_attempt_at` / `last_success_at` / `last_error`."""
    row = await external_calendars.request_sync(session, user, staff_id, calendar_id)
    return CalendarSyncQueued(id=row.id, next_sync_at=row.next_sync_at)
