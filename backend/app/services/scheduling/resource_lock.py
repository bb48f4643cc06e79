"""One lock per resource, held until the transaction ends: the resource-side twin of `calendar_lock`.

A booking that takes a resource locks its service's candidate resources exclusively, after the staff
member's calendar lock (lock order: client, staff calendars, resources; each kind in key order), then
picks a free one: two bookings wanting the last free room of a set queue for it, so the second sees
the first's booking and takes another room or is refused, rather than both picking the same room and
one losing at the constraint while another room stood free. Closures and deactivation take it too,
so a closure's answer lists every booking it covers. The exclusion constraint
`no_resource_double_booking` stays the guarantee; the lock makes the choice right.
"""

import uuid
from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

# The first key of the two-key form, naming this use of advisory locks ("res\0").
RESOURCE_LOCK_CLASS = int.from_bytes(b"res\0", signed=True)


def resource_lock_key(resource_id: uuid.UUID) -> int:
    """The second key: 32 bits of the id (a collision only makes two resources wait for each other)."""
    return int.from_bytes(resource_id.bytes[-4:], signed=True)


async def lock_resources(session: AsyncSession, resource_ids: Iterable[uuid.UUID]) -> None:
    """Wait for, then hold until commit, each resource's lock, exclusively and in key order."""
    for key in sorted({resource_lock_key(resource_id) for resource_id in resource_ids}):
        await session.execute(select(func.pg_advisory_xact_lock(RESOURCE_LOCK_CLASS, key)))
