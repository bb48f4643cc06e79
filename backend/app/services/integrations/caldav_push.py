"""c3po's own appointments written to a staff member's CalDAV calendar (`push_appointments`).

Reconciled at each sync rather than pushed per change: the sync's REPORT already lists what the
calendar holds, so c3po's events in it (UID `{appointment id}@c3po`, with their SEQUENCE) are
compared with the staff member's appointments in the window — a live one missing or older there is
PUT as `{uid}.ics`, one cancelled (or gone) is DELETEd. Nothing is written on the booking path, a
lost request is repaired by the next sync, and the sync's busy-time reading ignores these events by
their UID. The copies carry no ORGANIZER or ATTENDEE, so a server doing implicit scheduling never
emails the client a second invitation.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from icalendar import Calendar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.models import LIVE_STATUSES, Appointment, AppointmentStatus, Service, User
from app.services.integrations import egress
from app.services.messaging.notifications import UID_DOMAIN, uid
from app.utils.ics import CalendarEvent, build_calendar

MAX_WRITES = 200  # per sync; the rest waits for the next one


class PushFailed(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    put: list[tuple[str, str]]  # (uid, calendar text)
    delete: list[str]  # uids


def present(calendars: list[Calendar]) -> dict[str, int]:
    """c3po's events the calendar holds: uid -> SEQUENCE."""
    found: dict[str, int] = {}
    for calendar in calendars:
        for event in calendar.walk("VEVENT"):
            key = str(event.get("UID", ""))
            if key.lower().endswith(f"@{UID_DOMAIN}"):
                found[key] = int(event.get("SEQUENCE", 0))
    return found


def _copy(appointment: Appointment, service: Service, client: User) -> str:
    status = "TENTATIVE" if appointment.status == AppointmentStatus.pending.value else "CONFIRMED"
    event = CalendarEvent(
        uid=uid(appointment),
        sequence=appointment.sequence,
        starts_at=appointment.starts_at,
        ends_at=appointment.ends_at,
        summary=f"{service.name} — {client.full_name}",
        description=f"{get_settings().frontend_url}/appointments/{appointment.id}",
        status=status,
    )
    # A stored calendar object carries no METHOD (RFC 4791 §4.1): it is not an invitation.
    return build_calendar(event).replace("METHOD:REQUEST\r\n", "")


async def plan(
    session: AsyncSession, staff_id: uuid.UUID, held: dict[str, int], start: datetime, end: datetime
) -> Plan:
    rows = await session.execute(
        select(Appointment, Service, User)
        .join(Service, Service.id == Appointment.service_id)
        .join(User, User.id == Appointment.client_id)
        .where(Appointment.staff_id == staff_id, Appointment.starts_at < end, Appointment.ends_at > start)
    )
    wanted: set[str] = set()
    put = []
    for appointment, service, client in rows:
        if appointment.status not in LIVE_STATUSES:
            continue
        key = uid(appointment)
        wanted.add(key)
        if held.get(key, -1) < appointment.sequence:  # missing, or an older version
            put.append((key, _copy(appointment, service, client)))
    delete = [key for key in held if key not in wanted]
    return Plan(put[:MAX_WRITES], delete[: max(0, MAX_WRITES - len(put))])


def _href(calendar_url: str, key: str) -> str:
    return calendar_url.rstrip("/") + "/" + quote(key, safe="@") + ".ics"


async def apply(calendar_url: str, authorization: str | None, work: Plan) -> int:
    """Write the plan; raises `PushFailed` on the first refusal (the next sync tries again)."""
    headers = {"Authorization": authorization} if authorization else {}
    writes = [("PUT", key, text) for key, text in work.put] + [("DELETE", key, None) for key in work.delete]
    for method, key, text in writes:
        sent = {**headers, "Content-Type": "text/calendar; charset=utf-8"} if text else headers
        try:
            response = await egress.request(
                method, _href(calendar_url, key), headers=sent, content=text.encode() if text else None
            )
        except (egress.EgressRefused, egress.EgressFailed) as exc:
            raise PushFailed(f"{method} {key}: {exc}") from None
        if not (200 <= response.status < 300 or (method == "DELETE" and response.status == 404)):
            raise PushFailed(f"{method} {key}: the server answered HTTP {response.status}")
    return len(writes)
