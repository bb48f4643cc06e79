"""Closing waitlist entries and releasing their holds: what a booking, leaving and erasure share.

A hold (`WaitlistOffer` while `offered` and unexpired) blocks its slot like a booking: both calendar
reads count it busy (`availability_queries`), and `appointments._taken` answers 409 for it. Holds
are created only under the staff member's calendar lock taken exclusively (`waitlist.scan`), and
bookings read busy time under the shared one, so a hold and a booking never both take a slot. A
seat hold (`session_key`: a group session's) takes one seat of its session instead (`seats`).

Row locks, everywhere: an entry before its offers (so closing an entry and expiring its offer
cannot deadlock).
"""

import uuid
from collections.abc import Collection, Iterable
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import OPEN_ENTRY_STATUSES, OfferStatus, WaitlistEntry, WaitlistOffer, WaitlistStatus
from app.services.scheduling import availability

_OPEN = [s.value for s in OPEN_ENTRY_STATUSES]


async def close_entries(
    session: AsyncSession, status: WaitlistStatus, *conditions, offer_status: OfferStatus = OfferStatus.withdrawn
) -> list[uuid.UUID]:
    """Move the open entries matching `conditions` to `status` and their live offers to `offer_status`;
    a released hold frees its slot (the cache is bumped and the waitlist told). The entries' ids."""
    closed = await session.execute(
        update(WaitlistEntry)
        .where(WaitlistEntry.status.in_(_OPEN), *conditions)
        .values(status=status.value, updated_at=func.now())
        .returning(WaitlistEntry.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(closed.scalars())
    if ids:
        await release_offers(session, ids, offer_status)
    return ids


async def release_offers(session: AsyncSession, entry_ids: Collection[uuid.UUID], status: OfferStatus) -> None:
    """The entries' offers still `offered` become `status`; those still holding free their slots."""
    released = await session.execute(
        update(WaitlistOffer)
        .where(WaitlistOffer.entry_id.in_(list(entry_ids)), WaitlistOffer.status == OfferStatus.offered.value)
        .values(status=status.value, updated_at=func.now())
        .returning(WaitlistOffer.staff_id, WaitlistOffer.blocked_from, WaitlistOffer.blocked_until)
        .execution_options(synchronize_session=False)
    )
    freed(session, released.all())


def freed(session: AsyncSession, holds: Iterable[tuple[uuid.UUID, datetime, datetime]]) -> None:
    """After the commit: the days of these released holds bumped, and the waitlist told."""
    by_staff: dict[uuid.UUID, list[tuple[datetime, datetime]]] = {}
    for staff_id, blocked_from, blocked_until in holds:
        by_staff.setdefault(staff_id, []).append((blocked_from, blocked_until))
    for staff_id, ranges in by_staff.items():
        availability.invalidate_after_commit(session, staff_id, ranges=ranges)


async def close_for_bookings(session: AsyncSession, bookings: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """A client who booked a service leaves its waitlist: their open entries for it become `booked`."""
    for client_id, service_id in dict.fromkeys(bookings):
        await close_entries(
            session, WaitlistStatus.booked, WaitlistEntry.client_id == client_id, WaitlistEntry.service_id == service_id
        )


def open_entries_of(client_id: uuid.UUID):
    """A query for how many open entries a client has."""
    return select(func.count()).where(WaitlistEntry.client_id == client_id, WaitlistEntry.status.in_(_OPEN))


async def forget_client(session: AsyncSession, client_id: uuid.UUID) -> None:
    """Erasure: the client's holds released (their slots pass on), then their entries and offers deleted."""
    await close_entries(session, WaitlistStatus.left, WaitlistEntry.client_id == client_id)
    await session.execute(delete(WaitlistOffer).where(WaitlistOffer.client_id == client_id))
    await session.execute(delete(WaitlistEntry).where(WaitlistEntry.client_id == client_id))
