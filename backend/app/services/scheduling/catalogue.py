"""The catalogue: services (what can be booked, how long, at what price, with whom) and public staff profiles."""

import uuid
from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.errors import AppError, NotFound
from app.models import Resource, Role, Service, StaffProfile, User, service_staff
from app.models.service import CLIENT_LIMIT_FIELDS
from app.services import audit
from app.services.pagination import paginate
from app.services.scheduling.availability import invalidate_after_commit

CENT = Decimal("0.01")


class UnknownStaff(AppError):
    status, code, title = 422, "unknown_staff", "Not an active staff member"
    staff_ids: list[str]  # the ids that name no active staff member


class UnknownResource(AppError):
    status, code, title = 422, "unknown_resource", "No such resource"
    resource_ids: list[str]  # the ids that name no resource


def active_staff_filter():
    return (User.role == Role.staff.value, User.is_active.is_(True), User.deleted_at.is_(None))


# --- services ------------------------------------------------------------------------------------


async def get_service(session: AsyncSession, service_id: uuid.UUID, *, include_inactive: bool = False) -> Service:
    query = select(Service).where(Service.id == service_id)
    service = await session.scalar(query.options(selectinload(Service.staff), selectinload(Service.resources)))
    if service is None or not (service.is_active or include_inactive):
        raise NotFound("No such service")
    return service


async def list_services(
    session: AsyncSession,
    *,
    include_inactive: bool,
    staff_id: uuid.UUID | None,
    limit: int,
    offset: int,
) -> tuple[list[Service], int]:
    query = select(Service)
    if not include_inactive:
        query = query.where(Service.is_active.is_(True))
    if staff_id is not None:
        offered = select(service_staff.c.service_id).where(service_staff.c.staff_id == staff_id)
        query = query.where(Service.id.in_(offered))
    query = query.options(selectinload(Service.staff), selectinload(Service.resources))
    return await paginate(session, query, Service.name, Service.id, limit=limit, offset=offset)


async def _staff_members(
    session: AsyncSession, staff_ids: list[uuid.UUID], current: list[User] | None = None
) -> list[User]:
    """The users behind `staff_ids`: active staff members, or people already linked (a list sent back
    unchanged stays valid after someone on it was deactivated; availability skips them anyway)."""
    wanted = list(dict.fromkeys(staff_ids))
    if not wanted:
        return []
    found = {u.id: u for u in current or [] if u.id in wanted}
    query = select(User).where(User.id.in_(set(wanted) - found.keys()), *active_staff_filter())
    found |= {u.id: u for u in await session.scalars(query)}
    missing = [str(i) for i in wanted if i not in found]
    if missing:
        raise UnknownStaff(f"Not active staff members: {', '.join(missing)}", staff_ids=missing)
    return [found[i] for i in wanted]


async def _resources(session: AsyncSession, resource_ids: list[uuid.UUID]) -> list[Resource]:
    """The resources behind a service's `resource_ids`: each must exist (an inactive one stays in the
    set but is never picked), else 422 `unknown_resource` naming the others."""
    wanted = list(dict.fromkeys(resource_ids))
    if not wanted:
        return []
    found = {r.id: r for r in await session.scalars(select(Resource).where(Resource.id.in_(wanted)))}
    missing = [str(i) for i in wanted if i not in found]
    if missing:
        raise UnknownResource(f"No such resources: {', '.join(missing)}", resource_ids=missing)
    return [found[i] for i in wanted]


def _audit_view(service: Service) -> dict[str, Any]:
    return audit.snapshot(service) | {
        "staff_ids": sorted(str(i) for i in service.staff_ids),
        "resource_ids": sorted(str(i) for i in service.resource_ids),
    }


def _normalise(changes: dict[str, Any]) -> dict[str, Any]:
    if changes.get("price") is not None:
        changes["price"] = Decimal(changes["price"]).quantize(CENT)
    return changes


async def create_service(session: AsyncSession, actor: User | None, data: dict[str, Any]) -> Service:
    data = _normalise(dict(data))
    staff = await _staff_members(session, data.pop("staff_ids", []))
    needed = await _resources(session, data.pop("resource_ids", []))
    service = Service(**data, staff=staff, resources=needed)
    session.add(service)
    await session.flush()
    await audit.record(
        session,
        actor_id=actor.id if actor else None,
        action="service.create",
        entity_type="service",
        entity_id=service.id,
        after=_audit_view(service),
    )
    invalidate_after_commit(session, *service.staff_ids)
    return service


async def _apply(
    session: AsyncSession, actor: User, service: Service, changes: dict[str, Any], *, action: str
) -> Service:
    before = _audit_view(service)
    staff_before = set(service.staff_ids)
    if changes.get("staff_ids") is not None:
        service.staff = await _staff_members(session, changes["staff_ids"], service.staff)
    if changes.get("resource_ids") is not None:
        service.resources = await _resources(session, changes["resource_ids"])
    for field, value in _normalise(changes).items():
        if field not in ("staff_ids", "resource_ids") and (value is not None or field in CLIENT_LIMIT_FIELDS):
            setattr(service, field, value)
    await session.flush()
    await session.refresh(service, ["updated_at"])
    after = _audit_view(service)
    if after != before:
        await audit.record(
            session,
            actor_id=actor.id,
            action=action,
            entity_type="service",
            entity_id=service.id,
            before=before,
            after=after,
        )
        invalidate_after_commit(session, *(staff_before | set(service.staff_ids)))
    return service


async def update_service(session: AsyncSession, actor: User, service_id: uuid.UUID, changes: dict[str, Any]) -> Service:
    """Apply the fields sent (`None` changes nothing); `staff_ids` replaces the whole list."""
    service = await get_service(session, service_id, include_inactive=True)
    return await _apply(session, actor, service, dict(changes), action="service.update")


async def deactivate_service(session: AsyncSession, actor: User, service_id: uuid.UUID) -> None:
    """Services are never deleted: appointments and their history keep pointing at them."""
    service = await get_service(session, service_id, include_inactive=True)
    await _apply(session, actor, service, {"is_active": False}, action="service.deactivate")


# --- public staff profiles -----------------------------------------------------------------------


async def _offered(session: AsyncSession, staff_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Service]]:
    offered: dict[uuid.UUID, list[Service]] = defaultdict(list)
    if not staff_ids:
        return offered
    rows = await session.execute(
        select(service_staff.c.staff_id, Service)
        .join(Service, Service.id == service_staff.c.service_id)
        .where(service_staff.c.staff_id.in_(staff_ids), Service.is_active.is_(True))
        .order_by(Service.name, Service.id)
    )
    for staff_id, service in rows:
        offered[staff_id].append(service)
    return offered


def _profile(user: User, profile: StaffProfile | None, services: list[Service]) -> dict[str, Any]:
    return {
        "id": user.id,
        "full_name": user.full_name,
        "bio": profile.bio if profile else "",
        "timezone": profile.timezone if profile else user.timezone,
        "services": services,
    }


def _staff_query():
    return (
        select(User, StaffProfile)
        .outerjoin(StaffProfile, StaffProfile.user_id == User.id)
        .where(*active_staff_filter())
    )


async def list_staff(
    session: AsyncSession, *, service_id: uuid.UUID | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """Active staff members by name, each with the active services they provide."""
    query = _staff_query()
    if service_id is not None:
        query = query.where(
            User.id.in_(select(service_staff.c.staff_id).where(service_staff.c.service_id == service_id))
        )
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (await session.execute(query.order_by(User.full_name, User.id).limit(limit).offset(offset))).all()
    offered = await _offered(session, [user.id for user, _ in rows])
    return [_profile(user, profile, offered[user.id]) for user, profile in rows], total or 0


async def get_staff_profile(session: AsyncSession, staff_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(_staff_query().where(User.id == staff_id))).first()
    if row is None:
        raise NotFound("No such staff member")
    user, profile = row
    return _profile(user, profile, (await _offered(session, [user.id]))[user.id])
