"""The values that identified an erased person, found and replaced wherever they were stored."""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, String, Text, cast, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Base
from app.utils.ics import escape_text

ERASED = "[erased]"
ERASED_NAME = "Deleted user"
# A shorter "phone" (the profile allows 3 characters) could match unrelated text, so the sweep
# over every table leaves it to the places known to be about the person.
_MIN_SWEPT_PHONE_DIGITS = 7
_WHOLE = r"(?<!\w)(?:{})(?!\w)"  # the same in Python and in PostgreSQL's regular expressions


@dataclass(frozen=True)
class Traces:
    """Old value (lower-cased) -> its replacement; matching is case-insensitive."""

    replacements: dict[str, str]
    swept: dict[str, str] = field(default_factory=dict)  # the subset replaced in every table

    @classmethod
    def of(cls, *, email: str, full_name: str, phone: str | None, anonymous_email: str) -> "Traces":
        # The name also as a calendar file escapes it (`Doe\, Jane`).
        pairs = {email: anonymous_email, full_name: ERASED_NAME, escape_text(full_name): ERASED_NAME}
        swept = {email: anonymous_email}
        if phone:
            pairs[phone] = ERASED
            if sum(ch.isdigit() for ch in phone) >= _MIN_SWEPT_PHONE_DIGITS:
                swept[phone] = ERASED
        lower = {old.lower(): new for old, new in pairs.items() if old.strip()}
        return cls(lower, {old.lower(): new for old, new in swept.items()})

    @property
    def pattern(self) -> str:
        """A regular expression for Python and PostgreSQL alike (`re.escape` output is a valid ARE)."""
        return _alternatives(self.replacements)

    def scrub(self, value: Any) -> Any:
        """`value` (a string, or JSON made of dicts and lists) with every trace replaced."""
        if isinstance(value, str):
            return re.sub(self.pattern, lambda m: self.replacements.get(m.group().lower(), ERASED), value, flags=re.I)
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def matches(self, column: Any) -> Any:
        """SQL: the column, as text, holds a trace (case-insensitive)."""
        return cast(column, Text).op("~*")(self.pattern)


def _alternatives(values: Iterable[str]) -> str:
    """Whole values only: a name "Al" must not turn "call" into "cDeleted userl"."""
    return _WHOLE.format("|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)))


async def sweep(session: AsyncSession, traces: Traces) -> None:
    """Replace the email address (and a real phone number) in every text and JSON column of every
    table, so tables added later are covered without anyone remembering to add them here."""
    if not traces.swept:
        return
    pattern = _alternatives(traces.swept)
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if column.primary_key or not isinstance(column.type, String | JSON):
                continue
            value = cast(column, Text)
            for old, new in traces.swept.items():
                value = func.regexp_replace(value, _alternatives([old]), new, "gi")
            # An explicit cast shortens an over-long result to a VARCHAR's limit instead of failing.
            statement = (
                update(table)
                .where(cast(column, Text).op("~*")(pattern))
                .values({column.name: cast(value, column.type)})
            )
            await session.execute(statement.execution_options(synchronize_session=False))
