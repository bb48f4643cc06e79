"""The service catalogue: public reading, admin editing."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from app.api.deps import AdminUser, DbSession, Limit, Offset, claims_of, oauth2_scheme
from app.api.problem_docs import documented
from app.api.problems import problem_responses
from app.errors import Forbidden, InvalidToken, NotFound, ServiceHasBookings, Unauthorized
from app.models import Role, User
from app.schemas.inputs import QueryFlag
from app.schemas.service import ServiceCreate, ServiceOut, ServicePage, ServiceUpdate
from app.services.accounts import auth
from app.services.booking import cancellation
from app.services.scheduling import catalogue
from app.services.scheduling.catalogue import UnknownResource, UnknownStaff

router = APIRouter(prefix="/services", tags=["services"])

ADMIN_ERRORS = problem_responses(NotFound)
CancelFuture = Annotated[
    bool,
    Query(
        description="When deactivating the service or removing providers: cancel the future appointments that "
        "depend on it (with emails) instead of answering 409 `service_has_bookings`"
    ),
]


@documented(InvalidToken)
async def get_optional_user(session: DbSession, token: Annotated[str | None, Depends(oauth2_scheme)]) -> User | None:
    """The caller when a Bearer token is sent (a bad one is still 401); None for anonymous callers."""
    if not token:
        return None
    return await auth.authenticate_access(session, claims_of(token))


OptionalUser = Annotated[User | None, Depends(get_optional_user)]


def _is_admin(user: User | None) -> bool:
    return user is not None and user.role == Role.admin.value


@router.get(
    "", operation_id="services-list", summary="List services", responses=problem_responses(Unauthorized, Forbidden)
)
async def list_services(
    session: DbSession,
    caller: OptionalUser,
    staff_id: Annotated[uuid.UUID | None, Query(description="Only services this staff member provides")] = None,
    include_inactive: Annotated[QueryFlag, Query(description="Admins only: deactivated services too")] = False,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ServicePage:
    """Bookable services by name; admins may ask for deactivated ones too."""
    if include_inactive and caller is None:
        raise Unauthorized("Sign in as an admin to list deactivated services")
    if include_inactive and not _is_admin(caller):
        raise Forbidden("Only admins can list deactivated services")
    rows, total = await catalogue.list_services(
        session, include_inactive=include_inactive, staff_id=staff_id, limit=limit, offset=offset
    )
    return ServicePage(items=[ServiceOut.model_validate(s) for s in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{service_id}", operation_id="services-get", summary="Get a service", responses=problem_responses(NotFound)
)
async def get(service_id: uuid.UUID, session: DbSession, caller: OptionalUser) -> ServiceOut:
    """One active service (admins also see deactivated ones)."""
    service = await catalogue.get_service(session, service_id, include_inactive=_is_admin(caller))
    return ServiceOut.model_validate(service)


@router.post(
    "",
    operation_id="services-create",
    status_code=status.HTTP_201_CREATED,
    summary="Create a service",
    responses=problem_responses(UnknownStaff, UnknownResource),
)
async def create(body: ServiceCreate, admin: AdminUser, session: DbSession) -> ServiceOut:
    """Add a service; `staff_ids` must name active staff members (else 422 `unknown_staff`),
    `resource_ids` existing resources (else 422 `unknown_resource`): a booking takes one of them."""
    return ServiceOut.model_validate(await catalogue.create_service(session, admin, body.model_dump()))


@router.patch(
    "/{service_id}",
    operation_id="services-update",
    summary="Edit a service",
    responses=problem_responses(NotFound, UnknownStaff, UnknownResource, ServiceHasBookings),
)
async def update(
    service_id: uuid.UUID,
    body: ServiceUpdate,
    admin: AdminUser,
    session: DbSession,
    cancel_future: CancelFuture = False,
) -> ServiceOut:
    """Change the fields sent; `staff_ids` replaces the whole list of providers, `resource_ids`
    the set of resources a booking needs one of (bookings made already keep theirs)."""
    changes = body.model_dump(exclude_unset=True)
    await cancellation.release_service(session, admin, service_id, changes, cancel_future=cancel_future)
    return ServiceOut.model_validate(await catalogue.update_service(session, admin, service_id, changes))


@router.delete(
    "/{service_id}",
    operation_id="services-deactivate",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Deactivate a service",
    responses=problem_responses(NotFound, ServiceHasBookings),
)
async def deactivate(
    service_id: uuid.UUID, admin: AdminUser, session: DbSession, cancel_future: CancelFuture = False
) -> None:
    """Deactivate a service: no longer listed or bookable; past appointments keep it."""
    changes = {"is_active": False}
    await cancellation.release_service(session, admin, service_id, changes, cancel_future=cancel_future)
    await catalogue.deactivate_service(session, admin, service_id)
