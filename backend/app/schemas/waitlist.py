"""The waitlist (`/api/v1/waitlist`): entries clients join, and the offers that hold a freed slot."""

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.models import OfferStatus, WaitlistStatus
from app.schemas.common import Page, StrictModel, TimeZoneName, UtcDatetime
from app.schemas.inputs import Day
from app.schemas.staff import WallTime

EntryStatus = Literal[tuple(s.value for s in WaitlistStatus)]  # type: ignore[valid-type]
HoldStatus = Literal[tuple(s.value for s in OfferStatus)]  # type: ignore[valid-type]


class WaitlistJoin(StrictModel):
    """Wait for a slot of `service_id` (with `staff_id`, or anyone offering it) starting on a date
    from `first_date` to `last_date` and lying within `earliest_time`–`latest_time`, local times in
    `timezone` (default: the client's account zone)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "service_id": "3f0e8a52-3c55-4a8e-9d0e-2a4f1f7f6b10",
                    "staff_id": "0b7c9e0e-5b0a-4c1e-8f57-6a1b2c3d4e5f",
                    "first_date": "2026-12-07",
                    "last_date": "2026-12-11",
                    "earliest_time": "09:00",
                    "latest_time": "12:00",
                }
            ]
        }
    )

    service_id: uuid.UUID
    staff_id: uuid.UUID | None = Field(default=None, description="Only this staff member; null: anyone offering it")
    first_date: Day
    last_date: Day = Field(description="At most WAITLIST_MAX_DAYS (90) days after `first_date`")
    earliest_time: WallTime = Field(description="The slot starts at or after this local time")
    latest_time: WallTime = Field(description="The slot ends by this local time; after `earliest_time`")
    timezone: TimeZoneName | None = Field(default=None, description="Of the dates and times; default the client's")
    client_id: uuid.UUID | None = Field(
        default=None, description="Staff and admins may add a client; others may only join for themselves"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "WaitlistJoin":
        if self.last_date < self.first_date:
            raise ValueError("last_date must not be before first_date")
        if self.latest_time <= self.earliest_time:
            raise ValueError("latest_time must be after earliest_time")
        return self


class WaitlistEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    client_id: uuid.UUID
    service_id: uuid.UUID
    staff_id: uuid.UUID | None
    first_date: Day
    last_date: Day
    earliest_time: WallTime
    latest_time: WallTime
    timezone: str
    status: EntryStatus = Field(description="waiting, offered (holds an offer), booked, expired, declined or left")
    created_at: UtcDatetime = Field(description="The queue's order: earlier first")


class WaitlistPage(Page[WaitlistEntryOut]):
    pass


class WaitlistOfferOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    entry_id: uuid.UUID
    client_id: uuid.UUID
    service_id: uuid.UUID
    staff_id: uuid.UUID
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    expires_at: UtcDatetime = Field(description="Held for the client alone until then")
    status: HoldStatus = Field(description="offered (held), claimed, declined, expired or withdrawn")
    appointment_id: uuid.UUID | None = Field(description="The booking, once claimed")
    session_key: uuid.UUID | None = Field(
        description="A seat hold of a group session: the session it holds one seat of (as appointments' "
        "`session_key`); null when it holds the whole slot"
    )
    created_at: UtcDatetime
