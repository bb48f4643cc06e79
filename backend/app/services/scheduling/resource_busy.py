"""When a service's candidate resources are taken: live bookings and closures, read in one query.

`load` answers, for each active resource of the service's set in the order bookings pick them (by
name, then id), its busy ranges in epoch seconds; `first_free` is the pick. Availability uses it to
keep only the staff slots some resource is free for (and name that resource), bookings to choose
under the resource locks (`booking.resources`).
"""

import bisect
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import fetch_rows
from app.models import live_status_sql

_SQL = """
WITH candidate AS (
    SELECT r.id, r.name, r.is_active FROM service_resources AS sr JOIN resources AS r ON r.id = sr.resource_id
    WHERE sr.service_id = {service}
)
SELECT candidate.id, candidate.is_active, busy.lo, busy.hi, busy.session_key
FROM candidate
LEFT JOIN LATERAL (
    SELECT floor(date_part('epoch', starts_at))::bigint AS lo, ceil(date_part('epoch', ends_at))::bigint AS hi,
           NULL::uuid AS session_key
    FROM resource_closures
    WHERE candidate.is_active AND resource_id = candidate.id AND starts_at < {hi} AND ends_at > {lo}
    UNION ALL
    SELECT floor(date_part('epoch', blocked_from))::bigint, ceil(date_part('epoch', blocked_until))::bigint,
           session_key
    FROM appointments
    WHERE candidate.is_active AND resource_id = candidate.id AND resource_id IS NOT NULL AND {live}
      AND tstzrange(blocked_from, blocked_until, '[)') && tstzrange({lo}, {hi}, '[)') AND id <> ALL({excluded})
) AS busy ON true
ORDER BY candidate.name, candidate.id, busy.lo
"""
_NAMES = ("service", "lo", "hi", "excluded")
_TYPES = ("uuid", "timestamptz", "timestamptz", "uuid[]")
_SESSION_SQL = text(
    _SQL.format(live=live_status_sql(), **{n: f"CAST(:{n} AS {t})" for n, t in zip(_NAMES, _TYPES, strict=True)})
)
_POOL_SQL = _SQL.format(
    live=live_status_sql(), **{n: f"${i}::{t}" for i, (n, t) in enumerate(zip(_NAMES, _TYPES, strict=True), 1)}
)


@dataclass
class ResourceBusy:
    """Per active resource of the set (`ids`, in pick order): busy ranges [lo, hi) sorted by start,
    and the session each belongs to (None: a closure, or a booking that is no group session)."""

    ids: list[uuid.UUID]
    needed: bool = False  # the service has a set of resources (maybe none of them active)
    ranges: dict[uuid.UUID, list[tuple[int, int, uuid.UUID | None]]] = field(default_factory=dict)
    _merged: dict[uuid.UUID, tuple[list[int], list[int]]] = field(default_factory=dict)

    def restrict(self, allowed: Collection[uuid.UUID]) -> None:
        """Keep only these candidates (those whose locks are held)."""
        self.ids = [r for r in self.ids if r in allowed]

    def add(self, resource_id: uuid.UUID, lo: int, hi: int, session_key: uuid.UUID | None) -> None:
        """A range taken by a booking of this transaction (a series' earlier occurrence)."""
        bisect.insort(self.ranges.setdefault(resource_id, []), (lo, hi, session_key), key=lambda r: r[0])
        self._merged.pop(resource_id, None)

    def is_free(self, resource_id: uuid.UUID, lo: int, hi: int, session_key: uuid.UUID | None = None) -> bool:
        """Whether [lo, hi) overlaps none of its ranges (a seat's own session does not count)."""
        if session_key is not None:
            return not any(a < hi and b > lo and key != session_key for a, b, key in self.ranges.get(resource_id, ()))
        lows, highs = self._merged_ranges(resource_id)
        i = bisect.bisect_right(highs, lo)  # the first range ending after lo
        return i == len(lows) or lows[i] >= hi

    def first_free(
        self, lo: int, hi: int, *, prefer: uuid.UUID | None = None, session_key: uuid.UUID | None = None
    ) -> uuid.UUID | None:
        """The resource a booking blocking [lo, hi) takes: `prefer` if free, else the first free one."""
        order = [prefer, *self.ids] if prefer in self.ids else self.ids
        return next((r for r in order if self.is_free(r, lo, hi, session_key)), None)

    def _merged_ranges(self, resource_id: uuid.UUID) -> tuple[list[int], list[int]]:
        merged = self._merged.get(resource_id)
        if merged is None:
            lows: list[int] = []
            highs: list[int] = []
            for lo, hi, _ in self.ranges.get(resource_id, ()):
                if highs and lo <= highs[-1]:
                    highs[-1] = max(highs[-1], hi)
                else:
                    lows.append(lo)
                    highs.append(hi)
            merged = self._merged[resource_id] = (lows, highs)
        return merged


def _collect(rows: Sequence[Sequence]) -> ResourceBusy:
    busy = ResourceBusy(ids=[], needed=bool(rows))
    for resource_id, active, lo, hi, session_key in rows:
        if not active:
            continue
        if not busy.ids or busy.ids[-1] != resource_id:
            busy.ids.append(resource_id)
            busy.ranges[resource_id] = []
        if lo is not None:
            busy.ranges[resource_id].append((lo, hi, session_key))
    return busy


async def load(
    session: AsyncSession | None,
    service_id: uuid.UUID,
    lo: datetime,
    hi: datetime,
    *,
    exclude: Collection[uuid.UUID] = (),
) -> ResourceBusy:
    """The service's set of resources, and what takes its active ones in [lo, hi) (in the session,
    or with None on the read pool); `exclude`d appointments do not count (one being moved)."""
    if session is None:
        rows: Sequence[Sequence] = await fetch_rows(_POOL_SQL, service_id, lo, hi, list(exclude))
    else:
        params = {"service": service_id, "lo": lo, "hi": hi, "excluded": list(exclude)}
        rows = (await session.execute(_SESSION_SQL, params)).all()
    return _collect(rows)
