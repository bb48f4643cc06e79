"""Resources (rooms, chairs, equipment): admin editing, closures, and the sets services need one of.

A resource in use is never pulled from under a booking: deactivating or deleting one that future
live bookings take is refused (409 `resource_in_use`, listing them) until they are moved or
cancelled. Closures are like time off: bookings they cover stay booked and are listed in the answer.
Every change that can refuse or list bookings takes the resource's lock first (`resource_lock`).
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict, ListedAppointment, NotFound
from app.models import LIVE_STATUSES, Appointment, Resource, ResourceClosure, User
from app.schemas.common import iso_z
from app.services import audit
from app.services.pagination import paginate
from app.services.scheduling.resource_lock import lock_resources
from app.services.scheduling.schedules import InvalidInterval
from app.utils.time import utcnow

MAX_LISTED = 50


class ResourceUnavailable(Conflict):
    """No resource of the service's set is free (active, not closed, not booked) at that time."""

    code, title = "resource_unavailable", "No resource this service needs is free at this time"
    conflicts: list[datetime]  # the start times for which none is free


class ResourceInUse(Conflict):
    """Deactivating or deleting a resource that future live appointments take (listed)."""

    code, title = "resource_in_use", "Future appointments take this resource"
    conflicting_appointments: list[ListedAppointment]  # the first 50, by start
    conflicting_total: int


async def get_resource(session: AsyncSession, resource_id: uuid.UUID) -> Resource:
    resource = await session.get(Resource, resource_id)
    if resource is None:
        raise NotFound("No such resource")
    return resource


async def list_resources(
    session: AsyncSession, *, include_inactive: bool, limit: int, offset: int
) -> tuple[list[Resource], int]:
    query = select(Resource)
    if not include_inactive:
        query = query.where(Resource.is_active.is_(True))
    return await paginate(session, query, Resource.name, Resource.id, limit=limit, offset=offset)


async def create_resource(session: AsyncSession, actor: User, data: dict[str, Any]) -> Resource:
    resource = Resource(**data)
    session.add(resource)
    await session.flush()
    await session.refresh(resource, ["created_at", "updated_at"])
    await _record(session, actor, "resource.create", resource.id, None, audit.snapshot(resource))
    return resource


async def update_resource(
    session: AsyncSession, actor: User, resource_id: uuid.UUID, changes: dict[str, Any]
) -> Resource:
    """Apply the fields sent (None changes nothing); deactivation is refused while it is in use."""
    resource = await get_resource(session, resource_id)
    if changes.get("is_active") is False and resource.is_active:
        await _ensure_unused(session, resource, "deactivate")
    before = audit.snapshot(resource)
    for name, value in changes.items():
        if value is not None:
            setattr(resource, name, value)
    await session.flush()
    await session.refresh(resource, ["updated_at"])
    after = audit.snapshot(resource)
    if after != before:
        await _record(session, actor, "resource.update", resource.id, before, after)
    return resource


async def delete_resource(session: AsyncSession, actor: User, resource_id: uuid.UUID) -> None:
    """Delete it, with its closures and its place in services' sets; past appointments keep their
    times but no longer name it. Refused while future live appointments take it."""
    resource = await get_resource(session, resource_id)
    await _ensure_unused(session, resource, "delete")
    before = audit.snapshot(resource)
    await session.delete(resource)
    await session.flush()
    await _record(session, actor, "resource.delete", resource_id, before, None)


async def _ensure_unused(session: AsyncSession, resource: Resource, verb: str) -> None:
    await lock_resources(session, [resource.id])
    query = (
        select(Appointment)
        .where(
            Appointment.resource_id == resource.id,
            Appointment.status.in_(LIVE_STATUSES),
            Appointment.ends_at > utcnow(),
        )
        .order_by(Appointment.starts_at, Appointment.id)
    )
    live = list(await session.scalars(query))
    if live:
        raise ResourceInUse(
            f"{len(live)} future appointments take this resource: move or cancel them before you {verb} it",
            conflicting_appointments=[_listed(a) for a in live[:MAX_LISTED]],
            conflicting_total=len(live),
        )


def _listed(appointment: Appointment) -> dict[str, str]:
    fields = ("id", "staff_id", "client_id", "service_id", "starts_at", "ends_at", "status")
    values = {name: getattr(appointment, name) for name in fields}
    return {k: iso_z(v) if isinstance(v, datetime) else str(v) for k, v in values.items()}


async def _record(
    session: AsyncSession, actor: User, action: str, entity_id: uuid.UUID, before: Any, after: Any
) -> None:
    await audit.record(
        session,
        actor_id=actor.id,
        action=action,
        entity_type="resource",
        entity_id=entity_id,
        before=before,
        after=after,
    )


# --- closures ------------------------------------------------------------------------------------


async def list_closures(
    session: AsyncSession,
    resource_id: uuid.UUID,
    *,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    offset: int,
) -> tuple[list[ResourceClosure], int]:
    """Closures that overlap [start, end), earliest first."""
    resource = await get_resource(session, resource_id)
    query = select(ResourceClosure).where(ResourceClosure.resource_id == resource.id)
    if start is not None:
        query = query.where(ResourceClosure.ends_at > start)
    if end is not None:
        query = query.where(ResourceClosure.starts_at < end)
    return await paginate(session, query, ResourceClosure.starts_at, ResourceClosure.id, limit=limit, offset=offset)


async def create_closure(
    session: AsyncSession, actor: User, resource_id: uuid.UUID, data: Any
) -> tuple[ResourceClosure, list[Appointment]]:
    """Close the resource for [starts_at, ends_at); the live bookings that take it then stay booked
    and are listed, so someone can move or cancel them."""
    resource = await get_resource(session, resource_id)
    starts_at, ends_at = data.starts_at.astimezone(UTC), data.ends_at.astimezone(UTC)
    if ends_at <= starts_at:
        raise InvalidInterval("ends_at must be after starts_at")
    await lock_resources(session, [resource.id])
    closure = ResourceClosure(resource_id=resource.id, starts_at=starts_at, ends_at=ends_at, reason=data.reason)
    session.add(closure)
    await session.flush()
    await session.refresh(closure, ["created_at"])
    query = (
        select(Appointment)
        .where(
            Appointment.resource_id == resource.id,
            Appointment.status.in_(LIVE_STATUSES),
            Appointment.starts_at < ends_at,
            Appointment.ends_at > starts_at,
        )
        .order_by(Appointment.starts_at, Appointment.id)
    )
    covered = list(await session.scalars(query))
    await _record(session, actor, "resource_closure.create", resource.id, None, audit.snapshot(closure))
    return closure, covered


async def delete_closure(session: AsyncSession, actor: User, resource_id: uuid.UUID, closure_id: uuid.UUID) -> None:
    resource = await get_resource(session, resource_id)
    await lock_resources(session, [resource.id])
    closure = await session.scalar(
        select(ResourceClosure).where(ResourceClosure.id == closure_id, ResourceClosure.resource_id == resource.id)
    )
    if closure is None:
        raise NotFound("No such closure")
    before = audit.snapshot(closure)
    await session.delete(closure)
    await session.flush()
    await _record(session, actor, "resource_closure.delete", resource.id, before, None)
