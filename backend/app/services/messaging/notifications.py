"""Booking emails through the outbox: booked, confirmed, rescheduled, cancelled.

Each party gets one email in their own locale, with times in their own time zone, and an `.ics`
per appointment: METHOD:REQUEST (TENTATIVE while pending, else CONFIRMED) or METHOD:CANCEL, a
stable UID (`{id}@c3po`) and the appointment's SEQUENCE, which every change increases, so a
calendar replaces what it holds instead of adding a second event. A series gets one email with an
`.ics` per occurrence.
"""

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Appointment, AppointmentStatus, Resource, Service, User
from app.services.messaging import outbox
from app.utils.ics import CalendarEvent, build_calendar
from app.utils.manage_tokens import manage_url, page_url

UID_DOMAIN = "c3po"
_WEEKDAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "ru": ("пн", "вт", "ср", "чт", "пт", "сб", "вс"),
}
_MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "ru": (
        "января",
        "февраля",
        "марта",
        "апреля",
        "мая",
        "июня",
        "июля",
        "августа",
        "сентября",
        "октября",
        "ноября",
        "декабря",
    ),
}


# Reasons the system gives when it cancels, in each recipient's language (a person's reason is shown as written).
NOT_CONFIRMED_IN_TIME = "Not confirmed in time"
_SYSTEM_REASONS = {NOT_CONFIRMED_IN_TIME: {"ru": "Не подтверждена вовремя"}}


def _reason(reason: str | None, locale: str) -> str:
    return _SYSTEM_REASONS.get(reason or "", {}).get(locale, reason or "")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_when(starts_at: datetime, ends_at: datetime, timezone: str, locale: str) -> str:
    """`Thu 3 Dec 2026, 09:00–10:00 (Europe/Berlin)` / `чт, 3 декабря 2026, 09:00–10:00 (Europe/Moscow)`."""
    locale = locale if locale in _MONTHS else "en"
    zone = _zone(timezone)
    start, end = starts_at.astimezone(zone), ends_at.astimezone(zone)
    weekday, month = _WEEKDAYS[locale][start.weekday()], _MONTHS[locale][start.month - 1]
    separator = ", " if locale == "ru" else " "
    day = f"{weekday}{separator}{start.day} {month} {start.year}"
    return f"{day}, {start:%H:%M}–{end:%H:%M} ({zone.key})"


def uid(appointment: Appointment) -> str:
    return f"{appointment.id}@{UID_DOMAIN}"


async def _parties(session: AsyncSession, appointment: Appointment) -> tuple[Service, User, User]:
    service = await session.get(Service, appointment.service_id)
    client = await session.get(User, appointment.client_id)
    staff = await session.get(User, appointment.staff_id)
    assert service is not None and client is not None and staff is not None
    return service, client, staff


async def rooms_of(session: AsyncSession, appointments: Sequence[Appointment]) -> dict[uuid.UUID, str]:
    """The name of the resource (room, chair) each of these appointments takes, by appointment id;
    those taking none are left out."""
    by_resource = {a.id: a.resource_id for a in appointments if a.resource_id is not None}
    if not by_resource:
        return {}
    query = select(Resource.id, Resource.name).where(Resource.id.in_(set(by_resource.values())))
    names = {resource: name for resource, name in await session.execute(query)}
    return {appointment: names[resource] for appointment, resource in by_resource.items() if resource in names}


def _event(
    appointment: Appointment, service: Service, client: User, staff: User, viewer: User, location: str = ""
) -> CalendarEvent:
    other = client if viewer.id == staff.id else staff
    status = {AppointmentStatus.cancelled: "CANCELLED", AppointmentStatus.pending: "TENTATIVE"}.get(
        AppointmentStatus(appointment.status), "CONFIRMED"
    )
    return CalendarEvent(
        uid=uid(appointment),
        sequence=appointment.sequence,
        starts_at=appointment.starts_at,
        ends_at=appointment.ends_at,
        summary=f"{service.name} — {other.full_name}",
        description=page_url(appointment.id),
        organizer_email=staff.email,
        organizer_name=staff.full_name,
        attendee_email=client.email,
        attendee_name=client.full_name,
        status=status,
        location=location,
    )


def calendar_event(
    appointment: Appointment, service: Service, client: User, staff: User, room: str | None, *, viewer: User
) -> CalendarEvent:
    """The event as the invites describe it to `viewer` (the other party in its summary, the room as
    its LOCATION): calendar feeds serve the same UID, SEQUENCE and STATUS, so an app holding both sees
    one event."""
    return _event(appointment, service, client, staff, viewer, room or "")


async def calendar_for(session: AsyncSession, appointment: Appointment, *, viewer: User, method: str) -> str:
    service, client, staff = await _parties(session, appointment)
    room = (await rooms_of(session, [appointment])).get(appointment.id, "")
    return build_calendar(_event(appointment, service, client, staff, viewer, room), method=method)


async def _send(
    session: AsyncSession,
    template: str,
    appointments: Sequence[Appointment],
    *,
    method: str,
    previous_start: datetime | None = None,
    skip: Collection[uuid.UUID] = (),
) -> None:
    """One email per party (client, staff) about these appointments, which share their parties."""
    service, client, staff = await _parties(session, appointments[0])
    rooms = await rooms_of(session, appointments)
    for payload in payloads(
        template,
        appointments,
        service,
        client,
        staff,
        method=method,
        previous_start=previous_start,
        skip=skip,
        rooms=rooms,
    ):
        outbox.add_email(session, payload)


def payloads(
    template: str,
    appointments: Sequence[Appointment],
    service: Service,
    client: User,
    staff: User,
    *,
    method: str,
    previous_start: datetime | None = None,
    skip: Collection[uuid.UUID] = (),
    rooms: Mapping[uuid.UUID, str] | None = None,
) -> list[dict[str, Any]]:
    """The outbox payloads of one email per party (client first, then staff) about these appointments;
    `rooms` names the resource each takes (`rooms_of`), shown as where it takes place."""
    rooms = rooms or {}

    def at(appointment: Appointment, zone: str, locale: str) -> str:
        when = format_when(appointment.starts_at, appointment.ends_at, zone, locale)
        return f"{when} · {rooms[appointment.id]}" if appointment.id in rooms else when

    first = appointments[0]
    recipients = [(client, "client")] + ([(staff, "staff")] if staff.id != client.id else [])
    found: list[dict[str, Any]] = []
    for recipient, role in recipients:
        if recipient.id in skip or recipient.deleted_at is not None:
            continue
        zone, locale = recipient.timezone, recipient.locale
        duration = first.ends_at - first.starts_at
        context: dict[str, Any] = {
            "recipient_name": recipient.full_name,
            "role": role,
            "service_name": service.name,
            "staff_name": staff.full_name,
            "client_name": client.full_name,
            "other_name": client.full_name if role == "staff" else staff.full_name,
            "when": format_when(first.starts_at, first.ends_at, zone, locale),
            "occurrences": [at(a, zone, locale) for a in appointments],
            "where": rooms.get(first.id, ""),
            "count": len(appointments),
            "status": first.status,
            "previous_when": format_when(previous_start, previous_start + duration, zone, locale)
            if previous_start
            else "",
            "reason": _reason(first.cancellation_reason, locale),
            "notes": first.notes or "",
            "timezone": _zone(zone).key,
            "link": page_url(first.id),
        }
        # The client's link lets them in without signing in: a credential, blanked once sent. The
        # staff member signs in, so theirs stays the plain page.
        managed = role == "client" and template in MANAGED
        if managed:
            context["link"] = manage_url(first.id, first.client_id, first.ends_at)
        attachments = [
            {
                "filename": f"appointment-{appointment.id}.ics",
                "content": build_calendar(
                    _event(appointment, service, client, staff, recipient, rooms.get(appointment.id, "")),
                    method=method,
                ),
                "mime_type": f"text/calendar; method={method}",
            }
            for appointment in appointments
        ]
        found.append(
            outbox.email_payload(
                to=recipient.email,
                template=template,
                locale=locale,
                context=context,
                attachments=attachments,
                secret_keys=("link",) if managed else (),
            )
        )
    return found


BOOKED = "appointment_booked"
CONFIRMED = "appointment_confirmed"
RESCHEDULED = "appointment_rescheduled"
# The emails whose client link carries a manage token (a cancelled appointment has nothing to manage).
MANAGED = frozenset({BOOKED, CONFIRMED, RESCHEDULED})


async def booked(session: AsyncSession, appointments: Sequence[Appointment]) -> None:
    """To the client and the staff member: one appointment, or every occurrence of a new series."""
    await _send(session, BOOKED, appointments, method="REQUEST")


async def confirmed(session: AsyncSession, appointment: Appointment) -> None:
    await _send(session, CONFIRMED, [appointment], method="REQUEST")


async def rescheduled(session: AsyncSession, appointment: Appointment, previous_start: datetime) -> None:
    await _send(session, RESCHEDULED, [appointment], method="REQUEST", previous_start=previous_start)


async def cancelled(
    session: AsyncSession, appointments: Sequence[Appointment], *, skip: Collection[uuid.UUID] = ()
) -> None:
    """METHOD:CANCEL to both parties (but not to `skip`, e.g. an account being erased)."""
    if appointments:
        await _send(session, "appointment_cancelled", appointments, method="CANCEL", skip=skip)
