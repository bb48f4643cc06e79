import re
import uuid
from datetime import date, time
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from app.schemas.common import Page, StrictModel, TimeZoneName, UtcDatetime
from app.schemas.inputs import Day, Instant, Integer
from app.schemas.service import PriceOut

_WALL_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _wall_time(value: object) -> object:
    if isinstance(value, str):
        if not _WALL_TIME.match(value):
            raise ValueError("use 24-hour HH:MM, from 00:00 to 23:59")
        return time.fromisoformat(value)
    if isinstance(value, time):
        return value
    raise ValueError("use 24-hour HH:MM, from 00:00 to 23:59")


# Local wall-clock time, minutes precision: "09:00" in and out.
WallTime = Annotated[
    time,
    BeforeValidator(_wall_time),
    PlainSerializer(lambda value: value.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": _WALL_TIME.pattern, "examples": ["09:00"]}),
]


class Interval(StrictModel):
    start: WallTime
    end: WallTime = Field(description="Must be after `start` on the same day")


class WeeklyInterval(Interval):
    weekday: Integer = Field(ge=0, le=6, description="0 = Monday … 6 = Sunday")


class Schedule(StrictModel):
    """Weekly working hours, written in the staff member's own time zone."""

    timezone: TimeZoneName
    intervals: list[WeeklyInterval] = Field(max_length=7 * 48)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "timezone": "Europe/Berlin",
                    "intervals": [
                        {"weekday": 0, "start": "09:00", "end": "13:00"},
                        {"weekday": 0, "start": "14:00", "end": "18:00"},
                        {"weekday": 2, "start": "10:00", "end": "16:00"},
                    ],
                }
            ]
        }
    )


class OverrideIn(StrictModel):
    """Hours for one local date that replace the weekly ones; an empty list closes the day."""

    date: Day
    intervals: list[Interval] = Field(max_length=48)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"date": "2026-12-24", "intervals": [{"start": "09:00", "end": "12:00"}]}]}
    )


class OverrideOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    date: date
    intervals: list[Interval]


class OverridePage(Page[OverrideOut]):
    pass


class TimeOffIn(StrictModel):
    starts_at: Instant
    ends_at: Instant = Field(description="Must be after `starts_at`")
    reason: str | None = Field(default=None, max_length=500)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"starts_at": "2026-12-24T00:00:00+01:00", "ends_at": "2026-12-27T00:00:00+01:00", "reason": "Holidays"}
            ]
        }
    )


class TimeOffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    staff_id: uuid.UUID
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    reason: str | None
    created_at: UtcDatetime


class TimeOffPage(Page[TimeOffOut]):
    pass


class CoveredAppointment(BaseModel):
    """A pending or confirmed booking inside a new time-off block: it stays booked until someone acts."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    client_id: uuid.UUID
    service_id: uuid.UUID
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    status: str


class TimeOffCreated(BaseModel):
    time_off: TimeOffOut
    conflicting_appointments: list[CoveredAppointment] = Field(
        description="Live bookings that overlap the block; they are not cancelled automatically"
    )


class ScheduleSaved(BaseModel):
    """The week as saved, and the live bookings it leaves outside working hours."""

    timezone: str
    intervals: list[WeeklyInterval]
    conflicting_appointments: list[CoveredAppointment] = Field(
        description="Live bookings not yet over that now lie outside the hours; they stay booked"
    )


class OverrideSaved(OverrideOut):
    conflicting_appointments: list[CoveredAppointment] = Field(
        description="Live bookings of that date that now lie outside its hours; they stay booked"
    )


class OfferedService(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    duration_minutes: int
    price: PriceOut
    currency: str


class StaffOut(BaseModel):
    """A specialist's public profile; `id` is their user id."""

    id: uuid.UUID
    full_name: str
    bio: str
    timezone: str
    services: list[OfferedService] = Field(description="Active services this person provides")


class StaffPage(Page[StaffOut]):
    pass


class StaffLimits(StrictModel):
    """A staff member's booking limits (`PUT` replaces them; `null` is no limit)."""

    max_appointments_per_day: Annotated[Integer, Field(ge=1, le=1000)] | None = Field(
        default=None,
        description="Appointments a day, counted in the staff member's local calendar, whoever made them",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [{"max_appointments_per_day": 8}]})
