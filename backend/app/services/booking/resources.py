"""The resource each booking takes, chosen under the resource locks (`scheduling.resource_lock`).

Called after the staff member's calendar lock and the staff checks: lock the service's active
resources (exclusively, in key order), then give each appointment the first free one in the set's
order (by name, then id), or refuse them all with 409 `resource_unavailable` (at once, before any
lock, when the committed bookings and closures already leave none). A seat joining a group
session (`session_key`) takes the room its session already has; a moved appointment keeps its own
if it is free at the new time. The exclusion constraint `no_resource_double_booking` is the
guarantee: a clash there reads the same 409 (`is_resource_clash`).
"""

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import LIVE_STATUSES, Appointment, Service
from app.schemas.common import iso_z
from app.services.scheduling import resource_busy
from app.services.scheduling.resource_lock import lock_resources
from app.services.scheduling.resources import ResourceUnavailable
from app.utils.time import timestamp

CONSTRAINT = "no_resource_double_booking"


async def assign(
    session: AsyncSession,
    service: Service,
    appointments: Sequence[Appointment],
    *,
    exclude: uuid.UUID | None = None,
    keep: uuid.UUID | None = None,
) -> None:
    """Set `resource_id` on each appointment (not yet inserted, or `exclude`: the one being moved,
    keeping `keep` if it can); all or none: 409 `resource_unavailable` lists the starts without one."""
    lo = min(a.blocked_from for a in appointments)
    hi = max(a.blocked_until for a in appointments)
    excluded = () if exclude is None else (exclude,)
    sessions = await _session_rooms(session, [a.session_key for a in appointments if a.session_key is not None])
    # First without the locks: a start that committed bookings and closures leave no resource for
    # is refused at once, so the crowd behind a taken room does not queue for its lock.
    seen = await resource_busy.load(session, service.id, lo, hi, exclude=excluded)
    if not seen.needed:
        for appointment in appointments:
            appointment.resource_id = None
        return
    _pick(seen, appointments, sessions, keep)
    await lock_resources(session, seen.ids)
    busy = await resource_busy.load(session, service.id, lo, hi, exclude=excluded)
    busy.restrict(seen.ids)  # one added to the set since is not locked: not ours to take
    _pick(busy, appointments, sessions, keep)


def _pick(
    busy: resource_busy.ResourceBusy,
    appointments: Sequence[Appointment],
    sessions: dict[uuid.UUID, uuid.UUID],
    keep: uuid.UUID | None,
) -> None:
    missing: list[datetime] = []
    for appointment in appointments:
        start, end = timestamp(appointment.blocked_from), timestamp(appointment.blocked_until, ceil=True)
        prefer = sessions.get(appointment.session_key) if appointment.session_key is not None else keep
        chosen = busy.first_free(start, end, prefer=prefer, session_key=appointment.session_key)
        if chosen is None:
            missing.append(appointment.starts_at)
            continue
        appointment.resource_id = chosen
        busy.add(chosen, start, end, appointment.session_key)
    if missing:
        raise ResourceUnavailable(
            "No resource this service needs is free at this time", conflicts=[iso_z(s) for s in missing]
        )


async def _session_rooms(session: AsyncSession, keys: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The resource each of these group sessions already takes (its live seats share one)."""
    if not keys:
        return {}
    query = select(Appointment.session_key, Appointment.resource_id).where(
        Appointment.session_key.in_(keys), Appointment.status.in_(LIVE_STATUSES), Appointment.resource_id.is_not(None)
    )
    return {key: resource for key, resource in await session.execute(query)}


def is_resource_clash(exc: IntegrityError) -> bool:
    """Whether an exclusion violation was at the resource constraint (not the staff member's)."""
    orig = exc.orig
    for error in (orig, getattr(orig, "__cause__", None)):
        if getattr(error, "constraint_name", None) == CONSTRAINT:
            return True
    return CONSTRAINT in str(orig)
