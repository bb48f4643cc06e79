"""Manage links: the page a client opens from an email, without signing in (`/api/v1/manage/{token}`)."""

import uuid
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.schemas.appointment import AppointmentOut
from app.schemas.availability import WindowBound
from app.schemas.common import StrictModel, TimeZoneName, UtcDatetime
from app.schemas.inputs import Instant
from app.utils.time import local_bound_to_utc


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


class ManageAvailabilityQuery(BaseModel):
    """`GET /availability`'s window parameters; the service and staff member are the appointment's."""

    start: WindowBound = Field(description="Window start (inclusive): slots starting at or after it")
    end: WindowBound = Field(description="Window end (exclusive); at most 62 days after `start`")
    tz: TimeZoneName | None = Field(
        None,
        validate_default=True,
        description="IANA zone of the client: plain-date bounds are its local midnights, and each slot also "
        "carries `starts_at_local`/`ends_at_local` in it",
    )

    @field_validator("tz")
    @classmethod
    def _plain_dates_need_a_zone(cls, tz: str | None, info: ValidationInfo) -> str | None:
        plain = [name for name in ("start", "end") if type(info.data.get(name)) is date]
        if tz is None and plain:
            raise ValueError(f"{' and '.join(plain)} is a plain date: say in which zone with `tz`")
        return tz

    @property
    def zone(self) -> ZoneInfo | None:
        return ZoneInfo(self.tz) if self.tz else None

    def _instant(self, bound: datetime | date) -> datetime:
        if isinstance(bound, datetime):
            return bound.astimezone(UTC)
        assert self.tz is not None
        return local_bound_to_utc(bound, time(0), ZoneInfo(self.tz))

    @property
    def start_at(self) -> datetime:
        return self._instant(self.start)

    @property
    def end_at(self) -> datetime:
        return self._instant(self.end)
