"""RFC 5545 calendar files for appointments (METHOD:REQUEST invites, METHOD:CANCEL withdrawals) and
subscribed feeds (METHOD:PUBLISH)."""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

PRODID = "-//c3po//booking//EN"


@dataclass(frozen=True)
class CalendarEvent:
    uid: str
    sequence: int
    starts_at: datetime
    ends_at: datetime
    summary: str
    description: str = ""
    organizer_email: str | None = None
    organizer_name: str | None = None
    attendee_email: str | None = None
    attendee_name: str | None = None
    status: str = "CONFIRMED"  # CONFIRMED | TENTATIVE | CANCELLED
    location: str = ""  # the room or other resource the booking takes
    stamp: datetime | None = None


def _utc(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("calendar times must be aware")
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _text(value: str) -> str:
    """TEXT escaping (§3.3.11)."""
    return (
        value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\r\n", "\\n").replace("\n", "\\n")
    )


escape_text = _text  # for code that looks for a value inside a calendar file


def _param(value: str) -> str:
    """A parameter value: quoted, without the characters a quoted value cannot hold."""
    return '"' + value.replace('"', "'").replace("\r", " ").replace("\n", " ") + '"'


def _fold(line: str) -> str:
    """Lines longer than 75 octets continue on the next line after CRLF + space (§3.1), never mid-character."""
    if len(line.encode()) <= 75:  # the common case: nothing to fold
        return line
    out, current = [], b""
    for char in line:
        encoded = char.encode()
        if len(current) + len(encoded) > (75 if not out else 74):
            out.append(current.decode())
            current = b""
        current += encoded
    out.append(current.decode())
    return "\r\n ".join(out)


def unfold(content: str) -> str:
    """One physical line per content line again: a CRLF followed by a space or tab continues the line."""
    return re.sub(r"\r\n[ \t]", "", content)


def refold(content: str) -> str:
    """Fold a (possibly edited) calendar file's lines again."""
    return "".join(_fold(line) + "\r\n" for line in unfold(content).split("\r\n") if line)


def _event_lines(event: CalendarEvent) -> list[str]:
    lines = [
        "BEGIN:VEVENT",
        f"UID:{event.uid}",
        f"SEQUENCE:{event.sequence}",
        f"DTSTAMP:{_utc(event.stamp or datetime.now(UTC))}",
        f"DTSTART:{_utc(event.starts_at)}",
        f"DTEND:{_utc(event.ends_at)}",
        f"SUMMARY:{_text(event.summary)}",
        f"STATUS:{event.status}",
    ]
    if event.description:
        lines.append(f"DESCRIPTION:{_text(event.description)}")
    if event.location:
        lines.append(f"LOCATION:{_text(event.location)}")
    if event.organizer_email:
        name = f";CN={_param(event.organizer_name)}" if event.organizer_name else ""
        lines.append(f"ORGANIZER{name}:mailto:{event.organizer_email}")
    if event.attendee_email:
        name = f";CN={_param(event.attendee_name)}" if event.attendee_name else ""
        lines.append(f"ATTENDEE{name};ROLE=REQ-PARTICIPANT:mailto:{event.attendee_email}")
    return [*lines, "END:VEVENT"]


def _calendar(header: list[str], events: Iterable[CalendarEvent]) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "CALSCALE:GREGORIAN", *header]
    for event in events:
        lines += _event_lines(event)
    lines.append("END:VCALENDAR")
    return "".join(_fold(line) + "\r\n" for line in lines)


def build_calendar(event: CalendarEvent, method: str = "REQUEST") -> str:
    return _calendar([f"METHOD:{method}"], [event])


def build_feed(events: Iterable[CalendarEvent], *, name: str, refresh_minutes: int) -> str:
    """A subscribed calendar (METHOD:PUBLISH): its name, and how often apps should fetch it again
    (RFC 7986 REFRESH-INTERVAL, and X-PUBLISHED-TTL, which Outlook and older apps read)."""
    refresh = f"PT{refresh_minutes}M"
    header = [
        "METHOD:PUBLISH",
        f"NAME:{_text(name)}",
        f"X-WR-CALNAME:{_text(name)}",
        f"REFRESH-INTERVAL;VALUE=DURATION:{refresh}",
        f"X-PUBLISHED-TTL:{refresh}",
    ]
    return _calendar(header, events)
