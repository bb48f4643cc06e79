"""Staff members' external calendars: connecting, changing and removing them, and asking for a sync.

A staff member manages their own, an admin anyone's (`schedules.managed_staff`). URLs are checked
statically here (`egress.check_url`, an IP literal's address included); where a host name points is
checked at every fetch. The CalDAV password is sealed for the row and never returned or audited.
Removing a connection (or turning it off) removes its busy blocks under the calendar lock, like
deleting time off. The sync itself is `calendar_sync`.
"""

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.errors import AppError, Conflict, NotFound
from app.models import CalendarBusyBlock, CalendarConnection, CalendarKind, User
from app.schemas.calendar_connection import CalendarConnectionIn, CalendarConnectionPatch
from app.services import audit
from app.services.integrations import calendar_sync, egress
from app.services.messaging.outbox import get_arq_pool
from app.services.pagination import paginate
from app.services.scheduling.availability_changes import invalidate_after_commit
from app.services.scheduling.calendar_lock import lock_calendars
from app.services.scheduling.schedules import managed_staff


class InvalidCalendarUrl(AppError):
    status, code, title = 422, "invalid_calendar_url", "This calendar URL cannot be used"


class InvalidCalendarCredentials(AppError):
    status, code, title = 422, "invalid_calendar_credentials", "User name and password belong to CalDAV calendars"


class TooManyCalendars(Conflict):
    status, code, title = 409, "too_many_calendars", "This staff member has as many calendars as allowed"


class CalendarInactive(Conflict):
    status, code, title = 409, "calendar_inactive", "This calendar connection is turned off"


def _checked_url(url: str) -> str:
    try:
        return egress.check_url(url)
    except egress.EgressRefused as exc:
        raise InvalidCalendarUrl(str(exc)) from None


def _check_credentials(kind: str, *, username: bool, password: bool, push: bool) -> None:
    """Credentials and pushing belong to CalDAV, and a user name goes with a password."""
    if kind == CalendarKind.ics.value and (username or password or push):
        raise InvalidCalendarCredentials("An ICS URL takes no user name, password or appointment push")
    if kind == CalendarKind.caldav.value and username != password:
        raise InvalidCalendarCredentials("Give both a user name and a password, or neither")


def _view(row: CalendarConnection) -> dict[str, Any]:
    """What the audit log keeps: no credentials, and of the URL only its host (a calendar app's
    "secret address" is a credential in itself), so erasing the connection leaves nothing behind."""
    return {
        "kind": row.kind,
        "name": row.name,
        "host": urlsplit(row.url).hostname,
        "has_username": row.username is not None,
        "push_appointments": row.push_appointments,
        "is_active": row.is_active,
    }


async def _audit(session: AsyncSession, actor: User, action: str, row: CalendarConnection, before, after) -> None:
    await audit.record(
        session,
        actor_id=actor.id,
        action=action,
        entity_type="calendar_connection",
        entity_id=row.id,
        before=before,
        after=after,
    )


async def list_connections(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[CalendarConnection], int]:
    staff = await managed_staff(session, actor, staff_id)
    query = select(CalendarConnection).where(CalendarConnection.staff_id == staff.id)
    return await paginate(
        session, query, CalendarConnection.created_at, CalendarConnection.id, limit=limit, offset=offset
    )


async def get_connection(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, connection_id: uuid.UUID, *, for_update: bool = False
) -> CalendarConnection:
    """The connection (404 unless it is this staff member's). `for_update`: locked, after the staff
    member's calendar lock (exclusive), in the order a sync storing its blocks takes them."""
    staff = await managed_staff(session, actor, staff_id)
    if for_update:
        await lock_calendars(session, staff.id)
    query = select(CalendarConnection).where(
        CalendarConnection.id == connection_id, CalendarConnection.staff_id == staff.id
    )
    row = await session.scalar(query.with_for_update() if for_update else query)
    if row is None:
        raise NotFound("No such calendar connection")
    return row


async def create_connection(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, body: CalendarConnectionIn
) -> CalendarConnection:
    """Connect a calendar; its first sync is due at once (the worker's next pass, or `request_sync`)."""
    staff = await managed_staff(session, actor, staff_id)
    _check_credentials(
        body.kind, username=bool(body.username), password=bool(body.password), push=body.push_appointments
    )
    url = _checked_url(body.url)
    await lock_calendars(session, staff.id)  # also serialises the count below
    count = await session.scalar(select(func.count()).where(CalendarConnection.staff_id == staff.id))
    if (count or 0) >= get_settings().calendar_connections_per_staff:
        raise TooManyCalendars(f"At most {get_settings().calendar_connections_per_staff} calendars per staff member")
    row = CalendarConnection(
        id=uuid.uuid4(),
        staff_id=staff.id,
        kind=body.kind,
        name=body.name,
        url=url,
        username=body.username,
        push_appointments=body.push_appointments,
        is_active=True,
        consecutive_failures=0,
        block_count=0,
    )
    if body.password:
        row.password_encrypted = calendar_sync.seal_password(row.id, body.password)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    await _audit(session, actor, "calendar.connect", row, None, _view(row))
    _queue_sync(session, row.id)
    return row


async def update_connection(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, connection_id: uuid.UUID, body: CalendarConnectionPatch
) -> CalendarConnection:
    row = await get_connection(session, actor, staff_id, connection_id, for_update=True)
    before = _view(row)
    changes = {name: value for name, value in body.model_dump(exclude_unset=True).items() if value is not None}
    _check_credentials(
        row.kind,
        username=bool(changes.get("username") or row.username),
        password="password" in changes or row.password_encrypted is not None,
        push=changes.get("push_appointments", row.push_appointments),
    )
    if "url" in changes:
        row.url = _checked_url(changes["url"])
    for name in ("name", "username", "push_appointments"):
        if name in changes:
            setattr(row, name, changes[name])
    if "password" in changes:
        row.password_encrypted = calendar_sync.seal_password(row.id, changes["password"])
    if changes.get("is_active") is False and row.is_active:
        row.is_active = False
        await _remove_blocks(session, row)
    elif changes.get("is_active") is True:
        row.is_active = True
    row.next_sync_at = datetime.now(UTC)  # whatever changed, read the calendar again soon
    await session.flush()
    await session.refresh(row)
    await _audit(session, actor, "calendar.update", row, before, _view(row))
    if row.is_active:
        _queue_sync(session, row.id)
    return row


async def _remove_blocks(session: AsyncSession, row: CalendarConnection) -> None:
    """Drop a connection's blocks under the calendar lock; their days become bookable again."""
    await lock_calendars(session, row.staff_id)
    removed = (
        await session.execute(
            delete(CalendarBusyBlock)
            .where(CalendarBusyBlock.connection_id == row.id)
            .returning(CalendarBusyBlock.starts_at, CalendarBusyBlock.ends_at)
        )
    ).all()
    row.block_count = 0
    if removed:
        invalidate_after_commit(session, row.staff_id, ranges=[(lo, hi) for lo, hi in removed])


async def delete_connection(session: AsyncSession, actor: User, staff_id: uuid.UUID, connection_id: uuid.UUID) -> None:
    row = await get_connection(session, actor, staff_id, connection_id, for_update=True)
    before = _view(row)
    await _remove_blocks(session, row)
    await session.delete(row)
    await session.flush()
    await _audit(session, actor, "calendar.disconnect", row, before, None)


async def request_sync(
    session: AsyncSession, actor: User, staff_id: uuid.UUID, connection_id: uuid.UUID
) -> CalendarConnection:
    """Make the connection due now and hand it to the worker once committed (the cron's next pass
    picks it up should Redis be away)."""
    row = await get_connection(session, actor, staff_id, connection_id)
    if not row.is_active:
        raise CalendarInactive()
    row.next_sync_at = datetime.now(UTC)
    await session.flush()
    _queue_sync(session, row.id)
    return row


def _queue_sync(session: AsyncSession, connection_id: uuid.UUID) -> None:
    async def enqueue() -> None:
        try:
            pool = await get_arq_pool()
            await pool.enqueue_job(calendar_sync.SYNC_JOB, str(connection_id))
        except Exception:  # the cron syncs due connections anyway
            logger.opt(exception=True).warning("could not queue the sync of calendar {}", connection_id)

    after_commit(session, enqueue)
