"""Strict, bounded input types for request bodies and query strings.

pydantic's lax mode reads `0.5` as a Unix time, `0` and `"no"` as `false`, `"5"` and `5.0` as 5.
JSON has no datetime, date or UUID type, so those still arrive as ISO strings; everything else
must arrive as the JSON type the schema names. Query strings are text by nature: their integers
and booleans are parsed from exactly the text a generated client sends (`10`, `true`).

Datetimes and dates are bounded to the years 1900-2199 where they enter, before any arithmetic:
far beyond any real booking (at most `max_advance_days`, 730, ahead) or history (the service
stores nothing older than its own deployment), and far enough inside Python's year 1-9999 range
that adding any allowed duration (a 62-day window, 52 monthly occurrences) cannot overflow.
"""

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, Strict
from pydantic_core import PydanticCustomError

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive
_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INTEGER = re.compile(r"^-?\d{1,18}$")
_AMOUNT = re.compile(r"^\d{1,8}(\.\d{1,2})?$")


def _datetime_text(value: object) -> object:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        raise PydanticCustomError("datetime_type", "expected an ISO 8601 date-time string, e.g. 2026-03-08T09:00:00Z")
    return value


def check_instant(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise PydanticCustomError("datetime_out_of_range", "must be from 1900 up to (not including) 2200")
    return value


def _date_text(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise PydanticCustomError("date_type", "expected an ISO 8601 date string, e.g. 2026-03-08")
    return value


def check_day(value: date) -> date:
    if not EARLIEST.date() <= value < LATEST.date():
        raise PydanticCustomError("date_out_of_range", "must be from 1900 up to (not including) 2200")
    return value


# An instant with an offset, as an ISO string only, in [1900, 2200).
Instant = Annotated[AwareDatetime, BeforeValidator(_datetime_text), AfterValidator(check_instant)]
# A calendar date, `YYYY-MM-DD` only, in [1900, 2200).
Day = Annotated[date, BeforeValidator(_date_text), AfterValidator(check_day)]

# JSON integers and booleans only: `"5"`, `5.0` and `true` are not 5; `0` and `"false"` are not false.
Integer = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]


def _integer_text(value: object) -> object:
    if isinstance(value, str) and _INTEGER.match(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError("int_parsing", "expected a whole number written in digits, e.g. 10")


def _flag_text(value: object) -> object:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise PydanticCustomError("bool_parsing", "expected true or false")


# Query-string integers and booleans: the text `10`, `true` or `false`, nothing looser.
QueryInt = Annotated[int, BeforeValidator(_integer_text)]
QueryFlag = Annotated[bool, BeforeValidator(_flag_text)]


def _amount(value: object) -> object:
    """A money amount: a JSON number, or a plain decimal string with at most two decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PydanticCustomError("decimal_type", 'expected a number or a decimal string such as "45.00"')
    if isinstance(value, str) and not _AMOUNT.match(value):
        raise PydanticCustomError("decimal_parsing", 'expected a decimal string such as "45.00"')
    return value


Amount = Annotated[Decimal, BeforeValidator(_amount)]


class Omittable:
    """`Omittable[T] = None`: a field that may be left out but is never `null` (the schema says `T`).

    The default is not validated, so leaving the field out gives None; an explicit `null` is
    validated as a `T` and refused. Constraints go inside: `Omittable[Annotated[int, Field(ge=1)]]`.
    """

    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, Field(json_schema_extra=_no_default)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # the schema says "a T, or left out", not "null by default"
