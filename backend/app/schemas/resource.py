"""Resources (rooms, chairs, equipment) and their closures."""

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Page, StrictModel, UtcDatetime, trimmed_text
from app.schemas.inputs import Flag, Instant, Omittable
from app.schemas.staff import CoveredAppointment

ResourceName = trimmed_text(200)
Description = Annotated[str, Field(max_length=5000)]


class ResourceCreate(StrictModel):
    name: ResourceName
    description: Description = ""
    is_active: Flag = True

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "Massage room 1", "description": "Ground floor, with shower"}]}
    )


class ResourceUpdate(StrictModel):
    """Only the fields sent change; `is_active: false` is refused while future bookings take it."""

    name: Omittable[ResourceName] = None
    description: Omittable[Description] = None
    is_active: Omittable[Flag] = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"is_active": False}]})


class ResourceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str
    is_active: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ResourcePage(Page[ResourceOut]):
    pass


class ClosureIn(StrictModel):
    starts_at: Instant
    ends_at: Instant = Field(description="Must be after `starts_at`")
    reason: str | None = Field(default=None, max_length=500)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"starts_at": "2026-12-24T08:00:00+01:00", "ends_at": "2026-12-24T18:00:00+01:00", "reason": "Repairs"}
            ]
        }
    )


class ClosureOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    resource_id: uuid.UUID
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    reason: str | None
    created_at: UtcDatetime


class ClosurePage(Page[ClosureOut]):
    pass


class ClosureCreated(BaseModel):
    closure: ClosureOut
    conflicting_appointments: list[CoveredAppointment] = Field(
        description="Live bookings that take the resource during the closure; they are not cancelled or moved"
    )
