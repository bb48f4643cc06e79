"""Cancellation's rules in one place.

- Who may cancel or move, until when: a client until `CANCELLATION_MIN_NOTICE_HOURS` before the
  start, and never *into* that cut-off (a reschedule's new start is held to it too); its staff
  member and admins any time.
- Cancelling with emails: one path for a client's cancel, a series cancel, erasure, the future
  bookings of a staff member or service that goes away, and pending bookings nobody confirmed in
  time (`expiry`, no actor) (reminders cancelled, audited, events published, both parties mailed
  unless one is being erased).
- A staff member is not demoted or deactivated, and a service not deactivated or a provider not
  removed from it, while future live bookings depend on them: 409 `staff_has_bookings` /
  `service_has_bookings` listing them, unless the admin asks to cancel them (`cancel_future`).
"""

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.errors import (
    AppointmentChanged,
    CancellationWindowClosed,
    Forbidden,
    InvalidTransition,
    ServiceHasBookings,
    StaffHasBookings,
)
from app.models import LIVE_STATUSES, Appointment, AppointmentStatus, Role, User
from app.schemas.common import iso_z
from app.services import audit
from app.services.booking.appointments import Party, compare_and_swap, handles, record_change
from app.services.messaging import notifications, reminders
from app.services.scheduling import catalogue
from app.services.scheduling.calendar_lock import lock_calendars
from app.utils.time import utcnow

# How many conflicting appointments a 409 lists (the total is given beside them).
MAX_LISTED = 50


def cut_off() -> datetime:
    """Starts before this instant are inside the cut-off for clients."""
    return utcnow() + timedelta(hours=get_settings().cancellation_min_notice_hours)


def check_client_window(actor: User, item: Party, starts_at: datetime, *, new_start: datetime | None = None) -> None:
    """409 `cancellation_window_closed` for a client changing an appointment that starts inside the
    cut-off, or moving one into it; its staff member and admins are not held to it."""
    if handles(actor, item):
        return
    if actor.id != item.client_id:  # e.g. its former staff member, no longer staff
        raise Forbidden("Only its client, its staff member or an admin can do this")
    hours = get_settings().cancellation_min_notice_hours
    limit = cut_off()
    if starts_at < limit:
        raise CancellationWindowClosed(
            f"Appointments can be changed or cancelled up to {hours} hours before they start; please contact us"
        )
    if new_start is not None and new_start < limit:
        raise CancellationWindowClosed(
            f"The new time must be at least {hours} hours away: an appointment cannot be moved into the last "
            f"{hours} hours before its start",
            new_start=iso_z(new_start),
        )


def check_series_window(actor: User, item: Party, live: Sequence[Appointment]) -> None:
    if handles(actor, item):
        return
    if actor.id != item.client_id:
        raise Forbidden("Only its client, its staff member or an admin can do this")
    if any(appointment.starts_at < cut_off() for appointment in live):
        raise CancellationWindowClosed(
            "An occurrence starts too soon to cancel; cancel the series from a later occurrence"
        )


async def cancel_one(
    session: AsyncSession, actor: User | None, appointment: Appointment, reason: str | None, *, as_read: bool = False
) -> Appointment:
    """Cancel a live appointment (no permission checks, no email: callers see to both). `actor`
    None: the system did it (an expired pending booking), recorded with no `cancelled_by` or audit actor.

    `as_read`: only the version the caller read and checked (its cut-off, say) is cancelled; if it
    was moved meanwhile (a shared calendar lock does not keep reschedules out), 409
    `appointment_changed`. Callers holding the calendar exclusively need not ask."""
    if appointment.status not in LIVE_STATUSES:
        raise InvalidTransition(f"A {appointment.status} appointment cannot be cancelled")
    before = audit.snapshot(appointment)
    values = {
        "status": AppointmentStatus.cancelled.value,
        "cancellation_reason": reason,
        "cancelled_by": actor.id if actor else None,
        "sequence": Appointment.sequence + 1,
    }
    version = appointment.sequence if as_read else None
    updated = await compare_and_swap(session, appointment, values, expected=appointment.status, sequence=version)
    if updated is None and as_read:
        raise AppointmentChanged("The appointment changed meanwhile; reload it and try again")
    if updated is None:
        raise InvalidTransition("The appointment changed meanwhile; reload it")
    await reminders.cancel(session, updated)
    await record_change(session, actor, updated, "appointment.cancel", before, "appointment.cancelled")
    return updated


async def cancel_with_emails(
    session: AsyncSession,
    actor: User | None,
    appointments: Sequence[Appointment],
    reason: str | None,
    *,
    one_email: bool = False,
    skip: Collection[uuid.UUID] = (),
    as_read: bool = False,
) -> list[Appointment]:
    """Cancel each and tell both parties (not those in `skip`): one email per appointment, or one for
    them all (`one_email`: the occurrences of one series share their parties). `as_read`: see `cancel_one`."""
    cancelled = [await cancel_one(session, actor, item, reason, as_read=as_read) for item in appointments]
    if one_email:
        await notifications.cancelled(session, cancelled, skip=skip)
    else:
        for appointment in cancelled:
            await notifications.cancelled(session, [appointment], skip=skip)
    return cancelled


async def cancel_for_erasure(session: AsyncSession, user: User) -> list[Appointment]:
    """Cancel the user's future live appointments; the other party is told, the erased user is not."""
    query = _future_live((Appointment.client_id == user.id) | (Appointment.staff_id == user.id))
    live = list(await session.scalars(query))
    return await cancel_with_emails(session, user, live, "Account deleted", skip={user.id})


# --- what depends on a staff member or a service ----------------------------------------------------


def _future_live(*conditions: Any):
    return (
        select(Appointment)
        .where(*conditions, Appointment.status.in_(LIVE_STATUSES), Appointment.starts_at > utcnow())
        .order_by(Appointment.starts_at, Appointment.id)
    )


def _listing(appointments: Sequence[Appointment]) -> dict[str, Any]:
    """The problem extras: the first `MAX_LISTED` appointments, and how many there are."""
    fields = ("id", "staff_id", "client_id", "service_id", "starts_at", "ends_at", "status")

    def view(appointment: Appointment) -> dict[str, Any]:
        values = {name: getattr(appointment, name) for name in fields}
        return {k: iso_z(v) if isinstance(v, datetime) else str(v) for k, v in values.items()}

    return {
        "conflicting_appointments": [view(a) for a in appointments[:MAX_LISTED]],
        "conflicting_total": len(appointments),
    }


async def release_staff(session: AsyncSession, actor: User | None, staff: User, *, cancel_future: bool) -> None:
    """Before a staff member stops being one (demoted or deactivated): their future live bookings
    are refused (409 `staff_has_bookings`) or, with `cancel_future`, cancelled with emails.

    Under their calendar lock, so a booking, a reschedule or their own confirm either committed
    before (and is counted here) or waits and then finds them no longer staff."""
    if staff.role != Role.staff.value:
        return
    await lock_calendars(session, staff.id)
    live = list(await session.scalars(_future_live(Appointment.staff_id == staff.id)))
    if not live:
        return
    if not cancel_future:
        raise StaffHasBookings(
            f"{len(live)} future appointments are booked with this staff member: cancel them "
            "(`cancel_future=true`) or move them first",
            **_listing(live),
        )
    await cancel_with_emails(session, actor or staff, live, "The specialist is no longer available")


async def release_service(
    session: AsyncSession, actor: User, service_id: uuid.UUID, changes: dict[str, Any], *, cancel_future: bool
) -> None:
    """Before a service is deactivated or providers are removed from it: the future live bookings
    that depend on it are refused (409 `service_has_bookings`) or, with `cancel_future`, cancelled."""
    service = await catalogue.get_service(session, service_id, include_inactive=True)
    current = set(service.staff_ids)
    affected: set[uuid.UUID] = set()
    if changes.get("is_active") is False and service.is_active:
        affected = current
    elif changes.get("staff_ids") is not None:
        affected = current - set(changes["staff_ids"])
    if not affected:
        return
    await lock_calendars(session, *affected)
    query = _future_live(Appointment.service_id == service.id, Appointment.staff_id.in_(affected))
    live = list(await session.scalars(query))
    if not live:
        return
    if not cancel_future:
        raise ServiceHasBookings(
            f"{len(live)} future appointments depend on this service: cancel them (`cancel_future=true`) "
            "or move them first",
            **_listing(live),
        )
    await cancel_with_emails(session, actor, live, "This service is no longer offered")
