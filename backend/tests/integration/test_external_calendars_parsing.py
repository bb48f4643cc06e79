"""`ics_busy` on documents made here: the corners the server tests do not reach (DURATION, a date
without DTEND, clipping to the window, merging, unreadable input, a zone's own VTIMEZONE)."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.services.integrations import caldav, ics_busy

ZONE = ZoneInfo("Europe/Berlin")
START, END = datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)


def doc(*events: str) -> bytes:
    body = "".join(f"BEGIN:VEVENT\r\nDTSTAMP:20260101T000000Z\r\n{e}\r\nEND:VEVENT\r\n" for e in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\n{body}END:VCALENDAR\r\n".encode()


def busy(document: bytes, limit: int = 100, email: str = "anna@example.com"):
    calendars = ics_busy.parse([document])
    return ics_busy.busy_intervals(calendars, zone=ZONE, email=email, start=START, end=END, limit=limit)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_duration_and_a_date_without_an_end():
    found = busy(
        doc(
            "UID:a\r\nDTSTART:20270105T090000Z\r\nDURATION:PT90M",
            "UID:b\r\nDTSTART;VALUE=DATE:20270110",
        )
    )
    assert found == [(utc(2027, 1, 5, 9), utc(2027, 1, 5, 10, 30)), (utc(2027, 1, 9, 23), utc(2027, 1, 10, 23))]


def test_an_instant_without_an_end_blocks_nothing():
    assert busy(doc("UID:a\r\nDTSTART:20270105T090000Z")) == []


def test_overlapping_and_touching_events_merge_and_the_window_clips():
    found = busy(
        doc(
            "UID:a\r\nDTSTART:20270105T090000Z\r\nDTEND:20270105T100000Z",
            "UID:b\r\nDTSTART:20270105T100000Z\r\nDTEND:20270105T110000Z",
            "UID:c\r\nDTSTART:20270105T093000Z\r\nDTEND:20270105T103000Z",
            "UID:d\r\nDTSTART:20261231T230000Z\r\nDTEND:20270101T010000Z",
        )
    )
    assert found == [(START, utc(2027, 1, 1, 1)), (utc(2027, 1, 5, 9), utc(2027, 1, 5, 11))]


def test_only_the_staff_members_own_refusal_counts():
    event = (
        "UID:a\r\nDTSTART:20270105T090000Z\r\nDTEND:20270105T100000Z\r\n"
        "ATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.com\r\nATTENDEE;PARTSTAT=TENTATIVE:mailto:anna@example.com"
    )
    assert len(busy(doc(event))) == 1
    assert busy(doc(event), email="BOB@example.com") == []


def test_the_bound_counts_occurrences_not_events():
    daily = "UID:a\r\nDTSTART:20270104T090000Z\r\nDTEND:20270104T100000Z\r\nRRULE:FREQ=DAILY"
    assert len(busy(doc(daily), limit=28)) == 28  # 4 to 31 January: exactly the bound
    with pytest.raises(ics_busy.TooManyEvents, match="more than 27 events"):
        busy(doc(daily), limit=27)


def test_not_icalendar_is_unreadable():
    with pytest.raises(ics_busy.CalendarUnreadable):
        ics_busy.parse([b"hello"])


def test_caldav_answers_that_are_not_a_multistatus_are_refused():
    with pytest.raises(caldav.CalDavError, match="not XML"):
        caldav.calendar_data(b"<html")
    with pytest.raises(caldav.CalDavError, match="multistatus"):
        caldav.calendar_data(b"<html/>")
    query = caldav.calendar_query(START, START + timedelta(days=1)).decode()
    assert 'start="20270101T000000Z" end="20270102T000000Z"' in query
