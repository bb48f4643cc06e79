"""The GDPR export (data portability): every row about the caller, typed part by part."""

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.schemas.appointment import AppointmentOut
from app.schemas.calendar_connection import CalendarConnectionOut
from app.schemas.common import UtcDatetime
from app.schemas.feed import ExportCalendarFeed
from app.schemas.staff import OverrideOut, TimeOffOut, WeeklyInterval
from app.schemas.user import UserOut
from app.schemas.waitlist import WaitlistEntryOut, WaitlistOfferOut

Part = Literal["client", "staff"]


class ExportAppointment(AppointmentOut):
    role: Part = Field(description="The caller's part in the appointment")
    service_name: str
    staff_name: str


class ExportSeries(BaseModel):
    id: uuid.UUID
    role: Part
    rrule: str
    client_id: uuid.UUID
    staff_id: uuid.UUID
    service_id: uuid.UUID
    service_name: str
    staff_name: str
    created_at: UtcDatetime


class ExportService(BaseModel):
    id: uuid.UUID
    name: str


class ExportStaff(BaseModel):
    """A staff member's profile and calendar rules (null for other users)."""

    timezone: str
    bio: str
    services: list[ExportService]
    weekly_hours: list[WeeklyInterval]
    overrides: list[OverrideOut]
    time_off: list[TimeOffOut]


class ExportAuditEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    action: str
    entity_type: str
    entity_id: str
    actor_id: uuid.UUID | None
    as_actor: bool = Field(description="The caller made the change")
    as_subject: bool = Field(description="The change was to the caller's account, schedule or appointments")
    before: dict[str, JsonValue] | None = Field(
        description="Changed fields before; given only for entries about the caller (an admin's entries "
        "about other people do not carry those people's data)"
    )
    after: dict[str, JsonValue] | None = Field(description="Changed fields after; as `before`")
    created_at: UtcDatetime


class ExportEmail(BaseModel):
    """An email to the caller, without its content (links in it may still work)."""

    id: int
    template: str = Field(examples=["appointment_booked"])
    subject: str | None = Field(description="As sent; null if it cannot be rendered any more")
    status: Literal["pending", "sent", "failed"]
    attempts: int
    created_at: UtcDatetime
    sent_at: UtcDatetime | None
    failed_at: UtcDatetime | None


class ExportReminder(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    appointment_id: uuid.UUID
    offset_minutes: int
    due_at: UtcDatetime
    sent_at: UtcDatetime | None


class ExportActionToken(BaseModel):
    """A verification or reset link mailed to the caller (the token itself is never stored)."""

    model_config = ConfigDict(from_attributes=True)

    purpose: str = Field(examples=["verify_email"])
    created_at: UtcDatetime
    expires_at: UtcDatetime
    used_at: UtcDatetime | None


class ExportBusyBlock(BaseModel):
    starts_at: UtcDatetime
    ends_at: UtcDatetime


class ExportCalendarConnection(CalendarConnectionOut):
    """A connected external calendar (never its password) and the busy blocks its last good sync found."""

    busy_blocks: list[ExportBusyBlock]


class ExportWebhookDelivery(BaseModel):
    """A webhook sent (or to be sent) about the caller's appointments: what it said, and when."""

    id: int
    event_type: str = Field(examples=["appointment.created"])
    webhook_id: str
    status: Literal["pending", "delivered", "failed"]
    data: JsonValue = Field(description="The event's `data` as sent (ids only after an erasure)")
    created_at: UtcDatetime
    delivered_at: UtcDatetime | None


class ExportWaitlistEntry(WaitlistEntryOut):
    """A waitlist entry of the caller's, with the offers it was made."""

    offers: list[WaitlistOfferOut]


class UserExport(BaseModel):
    user: UserOut
    email_verified_at: UtcDatetime | None
    updated_at: UtcDatetime
    appointments: list[ExportAppointment] = Field(description="As client and as staff, oldest first")
    series: list[ExportSeries]
    staff: ExportStaff | None
    audit_entries: list[ExportAuditEntry] = Field(description="Oldest first")
    emails: list[ExportEmail] = Field(description="Emails to the caller's current address, oldest first")
    reminders: list[ExportReminder]
    action_tokens: list[ExportActionToken]
    calendar_feed: ExportCalendarFeed | None = Field(description="Null when the caller never had a feed URL")
    calendar_connections: list[ExportCalendarConnection] = Field(description="External calendars, oldest first")
    webhook_deliveries: list[ExportWebhookDelivery] = Field(
        description="Webhook deliveries about the caller's appointments and series, oldest first"
    )
    waitlist: list[ExportWaitlistEntry] = Field(description="The caller's waitlist entries, oldest first")
