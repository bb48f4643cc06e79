import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from app.schemas.common import Page, StrictModel, UtcDatetime, trimmed_text
from app.schemas.inputs import Amount, Flag, Integer, Omittable

ServiceName = trimmed_text(200)
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, upper case", examples=["EUR"])]
# JSON numbers are binary floats in JavaScript, so money leaves as a string with two decimals ("45.00").
# Requests may send either a string or a number.
Price = Annotated[
    Amount,
    Field(ge=0, le=Decimal("99999999.99"), decimal_places=2),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 99999999.99},
                {"type": "string", "pattern": r"^\d{1,8}(\.\d{1,2})?$"},
            ],
            "description": 'Decimal amount, at most two decimals; answered as a string with two, e.g. "45.00"',
            "examples": ["45.00"],
        }
    ),
]
PriceOut = Annotated[Decimal, PlainSerializer(lambda value: f"{value:.2f}", return_type=str), Field(examples=["45.00"])]
Minutes = Annotated[Integer, Field(ge=0, le=1440)]
Duration = Annotated[Integer, Field(ge=5, le=1440)]
Notice = Annotated[Integer, Field(ge=0, le=525600, description="How soon a booking may start, in minutes")]
Advance = Annotated[Integer, Field(ge=1, le=730, description="How far ahead one may book, in days")]
Description = Annotated[str, Field(max_length=5000)]
Capacity = Annotated[
    Integer,
    Field(
        ge=1,
        le=1000,
        description="Clients per session: above 1 each slot is a group session of that many seats "
        "(availability then gives `seats_left`). Lowering it never removes seats already taken",
    ),
]
BookingCap = Annotated[Integer, Field(ge=1, le=1000)]
MinGap = Annotated[Integer, Field(ge=1, le=525600)]
_LIMIT = "A client's bookings of this service per {} (the staff member's local calendar); null: no limit"
PerDay = Annotated[BookingCap | None, Field(description=_LIMIT.format("day"))]
PerWeek = Annotated[BookingCap | None, Field(description=_LIMIT.format("ISO week, Monday first"))]
PerMonth = Annotated[BookingCap | None, Field(description=_LIMIT.format("month"))]
Gap = Annotated[
    MinGap | None,
    Field(description="Least minutes between two of a client's bookings of this service (end to start); null: none"),
]
StaffIds = Annotated[list[uuid.UUID], Field(max_length=500, description="Active staff users")]
ResourceIds = Annotated[
    list[uuid.UUID],
    Field(max_length=20, description="Resources a booking needs one of (a free one is taken with the staff member)"),
]

_EXAMPLE = {
    "name": "Haircut",
    "description": "Wash, cut and style.",
    "duration_minutes": 45,
    "buffer_before_minutes": 0,
    "buffer_after_minutes": 10,
    "price": "45.00",
    "currency": "EUR",
    "requires_confirmation": False,
    "min_notice_minutes": 120,
    "max_advance_days": 60,
    "is_active": True,
    "staff_ids": ["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
}


class ServiceFields(StrictModel):
    description: Description = ""
    buffer_before_minutes: Minutes = 0
    buffer_after_minutes: Minutes = 0
    price: Price = Decimal("0.00")
    currency: Currency = "EUR"
    requires_confirmation: Flag = False
    min_notice_minutes: Notice = 60
    max_advance_days: Advance = 90
    is_active: Flag = True
    capacity: Capacity = 1
    staff_ids: StaffIds = Field(default_factory=list)
    resource_ids: ResourceIds = Field(default_factory=list)
    max_bookings_per_client_day: PerDay = None
    max_bookings_per_client_week: PerWeek = None
    max_bookings_per_client_month: PerMonth = None
    min_gap_minutes: Gap = None


class ServiceCreate(ServiceFields):
    name: ServiceName
    duration_minutes: Duration

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})


class ServiceUpdate(StrictModel):
    """Only the fields sent change; `staff_ids` and `resource_ids` replace the whole list."""

    name: Omittable[ServiceName] = None
    description: Omittable[Description] = None
    duration_minutes: Omittable[Duration] = None
    buffer_before_minutes: Omittable[Minutes] = None
    buffer_after_minutes: Omittable[Minutes] = None
    price: Omittable[Price] = None
    currency: Omittable[Currency] = None
    requires_confirmation: Omittable[Flag] = None
    min_notice_minutes: Omittable[Notice] = None
    max_advance_days: Omittable[Advance] = None
    is_active: Omittable[Flag] = None
    capacity: Omittable[Capacity] = None
    staff_ids: Omittable[StaffIds] = None
    resource_ids: Omittable[ResourceIds] = None
    # Booking limits: `null` lifts one.
    max_bookings_per_client_day: PerDay = None
    max_bookings_per_client_week: PerWeek = None
    max_bookings_per_client_month: PerMonth = None
    min_gap_minutes: Gap = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"price": "50.00", "staff_ids": []}]})


class ServiceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str
    duration_minutes: int
    buffer_before_minutes: int
    buffer_after_minutes: int
    price: PriceOut
    currency: str
    requires_confirmation: bool
    min_notice_minutes: int
    max_advance_days: int
    is_active: bool
    capacity: int = Field(description="Clients per session (1: one client per slot)")
    staff_ids: list[uuid.UUID]
    resource_ids: list[uuid.UUID] = Field(description="Resources a booking needs one of; empty: none")
    max_bookings_per_client_day: int | None
    max_bookings_per_client_week: int | None
    max_bookings_per_client_month: int | None
    min_gap_minutes: int | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ServicePage(Page[ServiceOut]):
    pass
