"""Resources (rooms, chairs, equipment) that services need one of, and their closures: admins only."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import AdminUser, DbSession, Limit, Offset
from app.api.problems import problem_responses
from app.errors import NotFound
from app.schemas.inputs import Instant, QueryFlag
from app.schemas.resource import (
    ClosureCreated,
    ClosureIn,
    ClosureOut,
    ClosurePage,
    ResourceCreate,
    ResourceOut,
    ResourcePage,
    ResourceUpdate,
)
from app.schemas.staff import CoveredAppointment
from app.services.scheduling import resources
from app.services.scheduling.resources import ResourceInUse
from app.services.scheduling.schedules import InvalidInterval

router = APIRouter(prefix="/resources", tags=["resources"])


@router.get("", operation_id="resources-list", summary="List resources")
async def list_resources(
    admin: AdminUser,
    session: DbSession,
    include_inactive: Annotated[QueryFlag, Query(description="Deactivated resources too")] = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ResourcePage:
    """Resources by name (active ones unless `include_inactive`)."""
    rows, total = await resources.list_resources(session, include_inactive=include_inactive, limit=limit, offset=offset)
    return ResourcePage(items=[ResourceOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.post("", operation_id="resources-create", status_code=status.HTTP_201_CREATED, summary="Create a resource")
async def create(body: ResourceCreate, admin: AdminUser, session: DbSession) -> ResourceOut:
    """Add a resource; services need it once their `resource_ids` name it."""
    return ResourceOut.model_validate(await resources.create_resource(session, admin, body.model_dump()))


@router.get(
    "/{resource_id}", operation_id="resources-get", summary="Get a resource", responses=problem_responses(NotFound)
)
async def get(resource_id: uuid.UUID, admin: AdminUser, session: DbSession) -> ResourceOut:
    """One resource, active or not."""
    return ResourceOut.model_validate(await resources.get_resource(session, resource_id))


@router.patch(
    "/{resource_id}",
    operation_id="resources-update",
    summary="Edit a resource",
    responses=problem_responses(NotFound, ResourceInUse),
)
async def update(resource_id: uuid.UUID, body: ResourceUpdate, admin: AdminUser, session: DbSession) -> ResourceOut:
    """Change the fields sent. Deactivating is refused (409 `resource_in_use`, listing them) while
    future live appointments take the resource: move or cancel them first."""
    changes = body.model_dump(exclude_unset=True)
    return ResourceOut.model_validate(await resources.update_resource(session, admin, resource_id, changes))


@router.delete(
    "/{resource_id}",
    operation_id="resources-delete",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a resource",
    responses=problem_responses(NotFound, ResourceInUse),
)
async def delete(resource_id: uuid.UUID, admin: AdminUser, session: DbSession) -> None:
    """Delete a resource with its closures and its place in services' sets; past appointments no
    longer name it. Refused (409 `resource_in_use`) while future live appointments take it."""
    await resources.delete_resource(session, admin, resource_id)


@router.get(
    "/{resource_id}/closures",
    operation_id="resources-list-closures",
    summary="List closures",
    responses=problem_responses(NotFound),
)
async def list_closures(
    resource_id: uuid.UUID,
    admin: AdminUser,
    session: DbSession,
    start: Annotated[Instant | None, Query(alias="from", description="Closures ending after this")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="Closures starting before this")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ClosurePage:
    """The resource's closures, earliest first."""
    rows, total = await resources.list_closures(session, resource_id, start=start, end=end, limit=limit, offset=offset)
    return ClosurePage(items=[ClosureOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.post(
    "/{resource_id}/closures",
    operation_id="resources-create-closure",
    status_code=status.HTTP_201_CREATED,
    summary="Close a resource",
    responses=problem_responses(NotFound, InvalidInterval),
)
async def create_closure(
    resource_id: uuid.UUID, body: ClosureIn, admin: AdminUser, session: DbSession
) -> ClosureCreated:
    """Make the resource unbookable for a time (like time off); the answer lists the pending or
    confirmed bookings that take it then (they are not cancelled or moved)."""
    closure, covered = await resources.create_closure(session, admin, resource_id, body)
    return ClosureCreated(
        closure=ClosureOut.model_validate(closure),
        conflicting_appointments=[CoveredAppointment.model_validate(a) for a in covered],
    )


@router.delete(
    "/{resource_id}/closures/{closure_id}",
    operation_id="resources-delete-closure",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove a closure",
    responses=problem_responses(NotFound),
)
async def delete_closure(resource_id: uuid.UUID, closure_id: uuid.UUID, admin: AdminUser, session: DbSession) -> None:
    """Remove a closure; its time becomes bookable again."""
    await resources.delete_closure(session, admin, resource_id, closure_id)
