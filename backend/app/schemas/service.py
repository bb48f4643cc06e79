import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints

from app.schemas.common import Page, StrictModel, UtcDatetime

ServiceName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, upper case", examples=["EUR"])]
# JSON numbers are binary floats in JavaScript, so money leaves as a string with two decimals ("45.00").
# Requests may send either a string or a number.
Price = Annotated[
    Decimal,
    Field(
        ge=0,
        le=Decimal("99999999.99"),
        decimal_places=2,
        description='Decimal amount; answered as a string with two decimals, e.g. "45.00"',
        examples=["45.00"],
    ),
]
PriceOut = Annotated[Decimal, PlainSerializer(lambda value: f"{value:.2f}", return_type=str), Field(examples=["45.00"])]
Minutes = Annotated[int, Field(ge=0, le=1440)]

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
    description: str = Field(default="", max_length=5000)
    buffer_before_minutes: Minutes = 0
    buffer_after_minutes: Minutes = 0
    price: Price = Decimal("0.00")
    currency: Currency = "EUR"
    requires_confirmation: bool = False
    min_notice_minutes: int = Field(default=60, ge=0, le=525600, description="How soon a booking may start")
    max_advance_days: int = Field(default=90, ge=1, le=730, description="How far ahead one may book")
    is_active: bool = True
    staff_ids: list[uuid.UUID] = Field(default_factory=list, max_length=500, description="Active staff users")


class ServiceCreate(ServiceFields):
    name: ServiceName
    duration_minutes: int = Field(ge=5, le=1440)

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})


class ServiceUpdate(StrictModel):
    """Only the fields sent change; `staff_ids` replaces the whole list."""

    name: ServiceName | None = None
    description: str | None = Field(default=None, max_length=5000)
    duration_minutes: int | None = Field(default=None, ge=5, le=1440)
    buffer_before_minutes: Minutes | None = None
    buffer_after_minutes: Minutes | None = None
    price: Price | None = None
    currency: Currency | None = None
    requires_confirmation: bool | None = None
    min_notice_minutes: int | None = Field(default=None, ge=0, le=525600)
    max_advance_days: int | None = Field(default=None, ge=1, le=730)
    is_active: bool | None = None
    staff_ids: list[uuid.UUID] | None = Field(default=None, max_length=500)

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
    staff_ids: list[uuid.UUID]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ServicePage(Page[ServiceOut]):
    pass
