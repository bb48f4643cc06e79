"""A minimal CalDAV client: read the events of one calendar in a time range (RFC 4791 §7.8).

One `REPORT` with a `calendar-query` (Depth: 1) on the calendar's URL, Basic authentication, through
the egress guard; the answer's `calendar-data` elements are iCalendar documents.
"""

from datetime import UTC, datetime
from xml.etree import ElementTree

from app.services.integrations import egress

_DAV, _CALDAV = "DAV:", "urn:ietf:params:xml:ns:caldav"


class CalDavError(Exception):
    """The server answered, but not with the events (status, or a body that is not a multistatus)."""


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def calendar_query(start: datetime, end: datetime) -> bytes:
    """The REPORT body: every VEVENT overlapping [start, end), with its calendar data."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<c:calendar-query xmlns:d="{_DAV}" xmlns:c="{_CALDAV}">'
        "<d:prop><d:getetag/><c:calendar-data/></d:prop>"
        '<c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT">'
        f'<c:time-range start="{_stamp(start)}" end="{_stamp(end)}"/>'
        "</c:comp-filter></c:comp-filter></c:filter>"
        "</c:calendar-query>"
    ).encode()


def calendar_data(body: bytes) -> list[str]:
    """The `calendar-data` texts of a multistatus answer."""
    try:
        root = ElementTree.fromstring(body)  # expat refuses entity expansion bombs; the body is capped
    except ElementTree.ParseError as exc:
        raise CalDavError(f"the answer is not XML: {exc}") from None
    if root.tag != f"{{{_DAV}}}multistatus":
        raise CalDavError("the answer is not a WebDAV multistatus")
    return [element.text for element in root.iter(f"{{{_CALDAV}}}calendar-data") if element.text]


async def events_between(
    url: str, username: str | None, password: str | None, start: datetime, end: datetime, *, max_bytes: int
) -> egress.Response:
    """The raw multistatus answer (see `calendar_data`); raises `EgressRefused` / `EgressFailed`."""
    headers = {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"}
    if username:
        headers["Authorization"] = egress.basic_auth(username, password or "")
    return await egress.request("REPORT", url, headers=headers, content=calendar_query(start, end), max_bytes=max_bytes)
