"""The audit log: who changed what and when (admins only)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminUser, DbSession, Limit, Offset
from app.schemas.audit import AuditEntryOut, AuditPage
from app.schemas.inputs import Instant
from app.services import audit

router = APIRouter(prefix="/audit-log", tags=["audit"])


@router.get("", operation_id="audit-list", summary="Audit log")
async def list_entries(
    _: AdminUser,
    session: DbSession,
    entity_type: Annotated[str | None, Query(max_length=32, examples=["service"])] = None,
    entity_id: Annotated[str | None, Query(max_length=64)] = None,
    actor_id: uuid.UUID | None = None,
    action: Annotated[str | None, Query(max_length=64, examples=["schedule.replace"])] = None,
    start: Annotated[Instant | None, Query(alias="from", description="Entries at or after this")] = None,
    end: Annotated[Instant | None, Query(alias="to", description="Entries before this")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> AuditPage:
    """Changes to users, services, schedules and appointments, newest first."""
    rows, total = await audit.search(
        session,
        entity_type=entity_type,
        entity_id=entity_id,
        actor_id=actor_id,
        action=action,
        start=start,
        end=end,
        limit=limit,
        offset=offset,
    )
    return AuditPage(items=[AuditEntryOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)
