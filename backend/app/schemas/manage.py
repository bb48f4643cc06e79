"""Manage links: the page a client opens from an email, without signing in (`/api/v1/manage/{token}`)."""

import uuid

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.appointment import AppointmentOut
from app.schemas.availability import ClientZone, WindowEnd, WindowQuery, WindowStart
from app.schemas.common import StrictModel, UtcDatetime
from app.schemas.inputs import Instant


class ActionState(BaseModel):
    allowed: bool
    code: str | None = Field(
        description="Why not: the problem `code` the action would answer now (`cancellation_window_closed`, "
        "`manage_action_not_allowed`); null when allowed"
    )
    reason: str | None = Field(description="Why not, in words for the page; null when allowed")


class ManageActions(BaseModel):
    view: ActionState
    cancel: ActionState
    reschedule: ActionState


class ManagedService(BaseModel):
    id: uuid.UUID
    name: str
    duration_minutes: int


class ManagedStaff(BaseModel):
    id: uuid.UUID
    full_name: str


class ManagedAppointment(BaseModel):
    """The appointment as `GET /appointments/{id}` shows it, with what the page needs around it."""

    appointment: AppointmentOut
    service: ManagedService
    staff: ManagedStaff
    timezone: str = Field(description="The staff member's IANA zone, the one they work in", examples=["Europe/Berlin"])
    client_timezone: str = Field(description="The client's IANA zone (their profile's), to show times in")
    change_deadline: UtcDatetime = Field(
        description="Until this instant the client may cancel or reschedule (the cancellation cut-off before the start)"
    )
    actions: ManageActions = Field(description="What the link lets the client do now, and why not")


class ManageCancel(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "Feeling unwell"}, {}]})

    reason: str | None = Field(default=None, max_length=500)


class ManageReschedule(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"starts_at": "2026-12-04T10:00:00+01:00"}]})

    starts_at: Instant = Field(description="The new start: one the availability of this link offers")
    sequence: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="The appointment's `sequence` as the page last saw it; if it has moved on since, "
        "409 `appointment_changed`",
    )


class ManageAvailabilityQuery(WindowQuery):
    """`GET /availability`'s window parameters; the service and staff member are the appointment's."""

    start: WindowStart
    end: WindowEnd
    tz: ClientZone = None
