"""Reading the audit trail (writing it is `app.services.audit.record`)."""

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import AuditEntry
from app.services.pagination import paginate


async def search(
    session: AsyncSession,
    *,
    entity_type: str | None = None,
    entity_id: str | None = None,
    actor_id: uuid.UUID | None = None,
    action: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEntry], int]:
    """Entries matching every filter given, newest first; `start` inclusive, `end` exclusive."""
    query = select(AuditEntry)
    for column, value in (
        (AuditEntry.entity_type, entity_type),
        (AuditEntry.entity_id, entity_id),
        (AuditEntry.actor_id, actor_id),
        (AuditEntry.action, action),
    ):
        if value is not None:
            query = query.where(column == value)
    if start is not None:
        query = query.where(AuditEntry.created_at >= start)
    if end is not None:
        query = query.where(AuditEntry.created_at < end)
    return await paginate(
        session, query, AuditEntry.created_at.desc(), AuditEntry.id.desc(), limit=limit, offset=offset
    )
