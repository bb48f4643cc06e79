"""A user's calendar feed: its secret URL (to the owner only) and, for the export, its dates."""

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import UtcDatetime

_EXAMPLE = "https://api.c3po.example/api/v1/calendar-feeds/<secret>.ics"


class CalendarFeedOut(BaseModel):
    url: str = Field(
        description="The feed; anyone holding it reads the calendar: treat it as a password", examples=[_EXAMPLE]
    )
    webcal_url: str = Field(
        description="The same as `webcal://`: a link to it opens the calendar app's subscribe dialog",
        examples=["webcal://api.c3po.example/api/v1/calendar-feeds/<secret>.ics"],
    )
    created_at: UtcDatetime
    rotated_at: UtcDatetime | None = Field(description="When the URL was last replaced (null: never)")
    last_fetched_at: UtcDatetime | None = Field(description="When a calendar app last fetched it (null: never)")


class ExportCalendarFeed(BaseModel):
    """The caller's calendar feed (its URL is a credential and is not exported)."""

    model_config = ConfigDict(from_attributes=True)

    created_at: UtcDatetime
    rotated_at: UtcDatetime | None
    last_fetched_at: UtcDatetime | None
