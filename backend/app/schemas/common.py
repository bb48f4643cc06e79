from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

# Unicode and spaces are fine, nothing is truncated; common passwords are refused by the service.
Password = Annotated[str, Field(min_length=8, max_length=128, examples=["correct horse battery staple"])]


def _known_timezone(value: str) -> str:
    if value not in _TIMEZONES:
        # The error's `type` in the 422's `errors` list is `unknown_timezone`, for clients to switch on.
        raise PydanticCustomError(
            "unknown_timezone", "unknown IANA time zone (for example Europe/Berlin or America/New_York)"
        )
    return value


_TIMEZONES = frozenset(available_timezones())
TimeZoneName = Annotated[str, AfterValidator(_known_timezone), Field(examples=["Europe/Berlin"])]


def _printable(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _trimmed(value: str) -> str:
    """Surrounding spaces go; a text of spaces only is empty."""
    value = value.strip()
    if not value:
        raise PydanticCustomError("string_too_short", "must not be blank")
    return value


def trimmed_text(max_length: int) -> Any:
    """A required one-line text of at most `max_length` characters as sent (the schema's
    `maxLength`, so nothing longer is ever accepted), kept without its surrounding spaces."""
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_trimmed)]


FullName = Annotated[trimmed_text(200), AfterValidator(_printable)]


class Message(BaseModel):
    detail: str


class StrictModel(BaseModel):
    """Request bodies: unknown fields are refused, so nobody can sneak in `role` or `is_active`."""

    model_config = ConfigDict(extra="forbid")


class Page[T](BaseModel):
    items: list[T]
    total: int
    limit: int
    offset: int


def iso_z(value: datetime) -> str:
    """An aware datetime as UTC ISO 8601 with `Z`, the form every answer uses."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Answers are always UTC (`...Z`), whatever offset the request or the database used.
# WithJsonSchema: the serializer's `str` would otherwise drop `format: date-time` from response schemas.
UtcDatetime = Annotated[
    datetime, PlainSerializer(iso_z, return_type=str), WithJsonSchema({"type": "string", "format": "date-time"})
]
