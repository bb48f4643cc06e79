"""Availability: the query (window bounds as instants or as local dates) and the answer.

The answer is rendered by `render`, not by pydantic: a month for a busy service is thousands of
slots, and the rendered text is what the cache keeps. `Availability` documents the same shape for
OpenAPI, and a unit test holds the two together.
"""

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from itertools import repeat
from operator import add, floordiv, mod
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, PlainValidator, ValidationInfo, WithJsonSchema, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.schemas.common import TimeZoneName, iso_z
from app.schemas.inputs import check_day, check_instant
from app.utils.time import from_timestamp, local_bound_to_utc

_LOCAL_START, _LOCAL_END = "2026-03-09T10:00:00-04:00", "2026-03-09T11:00:00-04:00"
_PLAIN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# `+01:00` sent unencoded in a query string arrives as ` 01:00`: read the space back as a plus.
_SPACE_FOR_PLUS = re.compile(r" (\d{2}(:?\d{2})?)$")


def _window_bound(value: object) -> datetime | date:
    if isinstance(value, datetime | date):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a date-time with an offset or a plain date")
    value = value.strip()
    if _PLAIN_DATE.match(value):
        try:
            return check_day(date.fromisoformat(value))
        except ValueError:
            raise ValueError("expected a real date, e.g. 2026-03-08") from None
    try:
        parsed = datetime.fromisoformat(_SPACE_FOR_PLUS.sub(r"+\1", value))
    except ValueError:
        raise ValueError("expected ISO 8601: 2026-03-08T00:00:00-05:00, 2026-03-08T05:00:00Z or 2026-03-08") from None
    if parsed.tzinfo is None:
        raise ValueError("a date-time needs a UTC offset, e.g. 2026-03-08T09:00:00+01:00 or ...Z")
    return check_instant(parsed)


WindowBound = Annotated[
    datetime | date,
    PlainValidator(_window_bound),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A date-time with an offset, or a plain date read as local midnight in `tz`",
            "examples": ["2026-03-08T00:00:00-05:00", "2026-03-08"],
        }
    ),
]


WindowStart = Annotated[WindowBound, Field(description="Window start (inclusive): slots starting at or after it")]
WindowEnd = Annotated[WindowBound, Field(description="Window end (exclusive); at most 62 days after `start`")]
ClientZone = Annotated[
    TimeZoneName | None,
    Field(
        validate_default=True,
        description="IANA zone of the client: plain-date bounds are its local midnights, and each slot also "
        "carries `starts_at_local`/`ends_at_local` in it",
    ),
]


class WindowQuery(BaseModel):
    """What every availability query shares: `start`, `end` and `tz` read as instants.

    Each subclass declares the fields (`start: WindowStart`, ...) in the order its endpoint lists
    its parameters: pydantic would put a base class's fields first and reorder the public ones."""

    if TYPE_CHECKING:
        start: datetime | date
        end: datetime | date
        tz: str | None

    @field_validator("tz", check_fields=False)
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
        zone = self.zone
        assert zone is not None  # the validator above
        return local_bound_to_utc(bound, time(0), zone)

    @property
    def start_at(self) -> datetime:
        return self._instant(self.start)

    @property
    def end_at(self) -> datetime:
        return self._instant(self.end)


class AvailabilityQuery(WindowQuery):
    """`GET /availability` parameters; `start_at`/`end_at` are the resolved instants."""

    service_id: uuid.UUID
    start: WindowStart
    end: WindowEnd
    staff_id: uuid.UUID | None = Field(None, description="Only this staff member (default: everyone offering it)")
    tz: ClientZone = None


class AvailableSlot(BaseModel):
    staff_id: uuid.UUID
    starts_at: datetime = Field(examples=["2026-03-09T14:00:00Z"])
    ends_at: datetime = Field(examples=["2026-03-09T15:00:00Z"])
    starts_at_local: datetime | SkipJsonSchema[None] = Field(
        None, description="Only with `tz`: the start in that zone, with its offset", examples=[_LOCAL_START]
    )
    ends_at_local: datetime | SkipJsonSchema[None] = Field(
        None, description="Only with `tz`: the end in that zone, with its offset", examples=[_LOCAL_END]
    )
    seats_left: int | SkipJsonSchema[None] = Field(
        None,
        ge=1,
        le=1000,
        description="Only for a group session service (`capacity` > 1): the seats still free in this session "
        "(`capacity` for a session nobody has booked yet); absent for other services",
        examples=[4],
    )
    resource_id: uuid.UUID | SkipJsonSchema[None] = Field(
        None,
        description="Only for a service that needs a resource: the one a booking of this slot would take now",
    )


class Availability(BaseModel):
    start: datetime = Field(description="The window start as understood, in UTC")
    end: datetime = Field(description="The window end as understood, in UTC")
    slots: list[AvailableSlot] = Field(description="Free slots by start time, then staff member")


def render(slots: Sequence[tuple[int, int, uuid.UUID]], start: datetime, end: datetime, zone: ZoneInfo | None) -> str:
    """The JSON text of `Availability` (UTC with `Z`; local renderings only with a zone).

    Slots of one service share a few hundred distinct (start, end) pairs across all staff, so each
    pair's text is built once; per slot only a dictionary lookup and a concatenation remain.
    """
    times: dict[tuple[int, int], str] = {}
    staff: dict[uuid.UUID, str] = {}
    parts = []
    if slots and len(slots[0]) > 3:  # each slot names its resource (`availability.ResourceSlot`)
        for start_, end_, member, resource in slots:  # type: ignore[misc]
            text = times.get((start_, end_))
            if text is None:
                text = times[start_, end_] = _times_text(start_, end_, zone)
            parts.append(f'{_staff_text(member)}{text[:-1]},"resource_id":"{resource}"}}')
        return _document(start, end, parts)
    for slot in slots:
        pair = slot[:2]
        text = times.get(pair)
        if text is None:
            text = times[pair] = _times_text(pair[0], pair[1], zone)
        sid = staff.get(slot[2])
        if sid is None:
            sid = staff[slot[2]] = _staff_text(slot[2])
        parts.append(sid + text)
    return _document(start, end, parts)


def render_seats(
    slots: Sequence[tuple[int, int, uuid.UUID, int]], start: datetime, end: datetime, zone: ZoneInfo | None
) -> str:
    """`render` for a group session service: each slot (start, end, staff, seats left) also carries
    `seats_left`."""
    times: dict[tuple[int, int], str] = {}
    parts = []
    for begin, finish, member, left in slots:
        text = times.get((begin, finish))
        if text is None:
            text = times[begin, finish] = _times_text(begin, finish, zone)[:-1]
        parts.append(f'{_staff_text(member)}{text},"seats_left":{left}}}')
    return _document(start, end, parts)


def render_starts(
    starts: Mapping[uuid.UUID, Sequence[int]], duration: int, start: datetime, end: datetime, zone: ZoneInfo | None
) -> str:
    """The text `render` gives the slots (s, s + duration, staff) of each staff member's ascending
    starts, merged by time, equal starts in the mapping's order.

    No Python step per slot (a month of a busy service is thousands): the starts become sort keys
    `start * n + staff position`, plain integers sorted in C, and each slot's text is a `map` over
    them, a lookup of its staff member's text and its start's (built once per distinct start).
    """
    texts = _StartTexts(duration, zone)
    prefixes = [_staff_text(member) for member in starts]
    count = len(prefixes)
    if count == 1:
        (only,) = starts.values()
        parts: Iterable[str] = map(prefixes[0].__add__, map(texts.__getitem__, only))
    else:
        keys: list[int] = []
        for position, member_starts in enumerate(starts.values()):
            keys += [s * count + position for s in member_starts]
        keys.sort()
        who = map(prefixes.__getitem__, map(mod, keys, repeat(count)))
        parts = map(add, who, map(texts.__getitem__, map(floordiv, keys, repeat(count))))
    return _document(start, end, parts)


class _StartTexts(dict[int, str]):
    """A start's text (its times after the staff id), built on first use."""

    def __init__(self, duration: int, zone: ZoneInfo | None) -> None:
        super().__init__()
        self.duration, self.zone = duration, zone
        self.instants = UtcTexts()  # one slot's end is usually another's start

    def __missing__(self, start: int) -> str:
        if self.zone is not None:
            text = self[start] = _times_text(start, start + self.duration, self.zone)
            return text
        instants = self.instants
        text = self[start] = f'","starts_at":"{instants[start]}","ends_at":"{instants[start + self.duration]}"}}'
        return text


def _staff_text(staff_id: uuid.UUID) -> str:
    return '{"staff_id":"' + str(staff_id)


def _document(start: datetime, end: datetime, parts: Iterable[str]) -> str:
    window = f'"start":"{iso_z(start)}","end":"{iso_z(end)}"'
    return f'{{{window},"slots":[{",".join(parts)}]}}'


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_CLOCK = tuple(f"T{minute // 60:02}:{minute % 60:02}:" for minute in range(24 * 60))
_SECONDS = tuple(f"{second:02}Z" for second in range(60))


class UtcTexts(dict[int, str]):
    """Instants (epoch seconds) as `YYYY-MM-DDTHH:MM:SSZ`, built on first use: each date's text once,
    the clock from a table."""

    def __init__(self) -> None:
        super().__init__()
        self.dates: dict[int, str] = {}

    def __missing__(self, seconds: int) -> str:
        day, second = divmod(seconds, 86400)
        date_text = self.dates.get(day)
        if date_text is None:
            date_text = self.dates[day] = date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
        text = self[seconds] = date_text + _CLOCK[second // 60] + _SECONDS[second % 60]
        return text


def _times_text(start: int, end: int, zone: ZoneInfo | None) -> str:
    instants = UtcTexts()
    text = f'","starts_at":"{instants[start]}","ends_at":"{instants[end]}"'
    if zone is not None:
        starts_at, ends_at = from_timestamp(start), from_timestamp(end)
        local = f',"starts_at_local":"{starts_at.astimezone(zone).isoformat()}"'
        text += local + f',"ends_at_local":"{ends_at.astimezone(zone).isoformat()}"'
    return text + "}"
