"""External calendars of a staff member: what is sent to connect one and what is shown of it.

The CalDAV password goes in, never out: answers say only whether one is stored."""

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import Page, StrictModel, UtcDatetime

CalendarKindName = Literal["ics", "caldav"]
_URL = Field(min_length=1, max_length=2048, description="http(s); no credentials in it (see `username`)")


class CalendarConnectionIn(StrictModel):
    kind: CalendarKindName = Field(description="`ics`: a URL serving an iCalendar file; `caldav`: a CalDAV calendar")
    url: str = _URL
    name: str = Field(default="", max_length=200, description="A label for people")
    username: str | None = Field(default=None, min_length=1, max_length=200, description="CalDAV only")
    password: str | None = Field(default=None, min_length=1, max_length=500, description="CalDAV only; never shown")
    push_appointments: bool = Field(
        default=False, description="CalDAV only: also write the staff member's c3po appointments there at each sync"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "ics", "url": "https://calendar.example.com/ical/me/basic.ics", "name": "Work calendar"},
                {
                    "kind": "caldav",
                    "url": "https://dav.example.com/calendars/anna/work/",
                    "username": "anna",
                    "password": "app-password",
                },
            ]
        }
    )


class CalendarConnectionPatch(StrictModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    name: str | None = Field(default=None, max_length=200)
    username: str | None = Field(default=None, min_length=1, max_length=200)
    password: str | None = Field(default=None, min_length=1, max_length=500)
    push_appointments: bool | None = None
    is_active: bool | None = Field(default=None, description="Inactive: not synced; its blocks are removed")

    model_config = ConfigDict(json_schema_extra={"examples": [{"password": "new-app-password"}, {"is_active": False}]})


class CalendarConnectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    staff_id: uuid.UUID
    kind: CalendarKindName
    name: str
    url: str
    username: str | None
    has_password: bool
    push_appointments: bool
    is_active: bool
    last_attempt_at: UtcDatetime | None = Field(description="When a sync last started")
    last_success_at: UtcDatetime | None = Field(description="When a sync last replaced the busy blocks")
    last_error: str | None = Field(description="Why the latest sync failed; null after a success")
    consecutive_failures: int
    block_count: int = Field(description="Busy blocks from the last good sync")
    next_sync_at: UtcDatetime
    created_at: UtcDatetime


class CalendarConnectionPage(Page[CalendarConnectionOut]):
    pass


class CalendarSyncQueued(BaseModel):
    id: uuid.UUID
    next_sync_at: UtcDatetime
