import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.models import AppointmentStatus
from app.schemas.common import Page, StrictModel, UtcDatetime
from app.schemas.inputs import Instant, Omittable

Notes = Annotated[str, Field(max_length=2000, examples=["First visit; please bring earlier X-rays."])]


class Recurrence(StrictModel):
    rrule: str = Field(
        max_length=500,
        description="RFC 5545 RRULE subset: FREQ=DAILY|WEEKLY|MONTHLY, INTERVAL, and COUNT or UNTIL; "
        "at most 52 occurrences, each at the same local time in the staff member's time zone",
        examples=["FREQ=WEEKLY;INTERVAL=1;COUNT=6"],
    )


class AppointmentCreate(StrictModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "service_id": "3f0e8a52-3c55-4a8e-9d0e-2a4f1f7f6b10",
                    "staff_id": "0b7c9e0e-5b0a-4c1e-8f57-6a1b2c3d4e5f",
                    "starts_at": "2026-12-03T09:00:00+01:00",
                    "notes": "First visit",
                },
                {
                    "service_id": "3f0e8a52-3c55-4a8e-9d0e-2a4f1f7f6b10",
                    "staff_id": "0b7c9e0e-5b0a-4c1e-8f57-6a1b2c3d4e5f",
                    "starts_at": "2026-12-03T09:00:00+01:00",
                    "recurrence": {"rrule": "FREQ=WEEKLY;INTERVAL=1;COUNT=6"},
                },
            ]
        }
    )

    service_id: uuid.UUID
    staff_id: uuid.UUID
    starts_at: Instant
    notes: Notes | None = None
    client_id: uuid.UUID | None = Field(
        default=None, description="Staff and admins may book for a client; others may only book for themselves"
    )
    recurrence: Recurrence | None = None


class AppointmentUpdate(StrictModel):
    """`starts_at` reschedules (the same checks as booking); `notes` replaces the notes (`null` clears them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "minProperties": 1,
            "examples": [{"starts_at": "2026-12-04T10:00:00+01:00"}, {"notes": "Running late"}],
        }
    )

    starts_at: Omittable[Instant] = None
    notes: Notes | None = None
    sequence: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="With `starts_at`: the appointment's `sequence` as you last saw it; if it has moved on "
        "(another reschedule, a confirmation or a cancellation won), 409 `appointment_changed`",
    )

    @model_validator(mode="after")
    def _something_to_change(self) -> "AppointmentUpdate":
        if not self.model_fields_set - {"sequence"}:
            raise ValueError("give starts_at and/or notes")
        if self.sequence is not None and self.starts_at is None:
            raise ValueError("sequence goes with starts_at")
        if "starts_at" in self.model_fields_set and self.starts_at is None:
            raise ValueError("starts_at cannot be null")
        return self


class CancelRequest(StrictModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "Feeling unwell"}]})

    reason: str | None = Field(default=None, max_length=500)


class SeriesCancelRequest(StrictModel):
    model_config = ConfigDict(
        populate_by_name=True, json_schema_extra={"examples": [{"from": "2026-12-17T09:00:00+01:00"}, {}]}
    )

    from_: Omittable[Instant] = Field(
        default=None,
        alias="from",
        description="Cancel the live occurrences starting at or after this instant (default: from now on)",
    )
    reason: str | None = Field(default=None, max_length=500)


class AppointmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    series_id: uuid.UUID | None
    client_id: uuid.UUID
    staff_id: uuid.UUID
    service_id: uuid.UUID
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    status: AppointmentStatus
    notes: str | None
    cancellation_reason: str | None
    cancelled_by: uuid.UUID | None
    sequence: int = Field(description="Version: bumped by every move, confirmation and cancellation")
    session_key: uuid.UUID | None = Field(
        description="A seat of a group session: the session's id, shared by its seats (else null)"
    )
    seat: int | None = Field(description="A seat of a group session: its number, 1 to the capacity (else null)")
    resource_id: uuid.UUID | None = Field(
        None, description="The resource it takes (a room, a chair), when its service needs one"
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AppointmentPage(Page[AppointmentOut]):
    pass


class SeriesOut(BaseModel):
    """A recurring series' occurrences (the ones a call created or changed)."""

    series_id: uuid.UUID
    appointments: list[AppointmentOut]


def to_json(appointment: object) -> dict:
    """The appointment exactly as the API answers it, JSON-ready (for events and stored answers)."""
    return AppointmentOut.model_validate(appointment).model_dump(mode="json")


class Attendee(BaseModel):
    appointment_id: uuid.UUID = Field(description="The attendee's own appointment (their seat)")
    client_id: uuid.UUID
    full_name: str
    email: str
    status: AppointmentStatus
    seat: int | None = Field(description="The seat's number (null for an appointment that is not a seat)")


class AttendeeList(BaseModel):
    """The live seats of a group session (for any other appointment: itself, while it is live)."""

    session_key: uuid.UUID | None
    capacity: int = Field(description="The service's seats per session as it is now")
    seats_taken: int = Field(description="Live seats; may exceed `capacity` after the capacity was lowered")
    attendees: list[Attendee] = Field(description="By seat number")
