import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Page, UtcDatetime


class AuditEntryOut(BaseModel):
    """One change: who (`actor_id`, null for the system), what, and the fields that changed."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    actor_id: uuid.UUID | None
    action: str = Field(examples=["service.update"])
    entity_type: str = Field(examples=["service"], description="user, service, schedule or appointment")
    entity_id: str = Field(description="The entity's id; for `schedule` entries, the staff member's user id")
    before: dict[str, Any] | None = Field(description="Changed fields before; null when the entity was created")
    after: dict[str, Any] | None = Field(description="Changed fields after; null when the entity was removed")
    created_at: UtcDatetime


class AuditPage(Page[AuditEntryOut]):
    pass
