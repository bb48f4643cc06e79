"""`build_feed`: a subscribed calendar of many events (METHOD:PUBLISH), read back with `icalendar`."""

from datetime import UTC, datetime, timedelta

import icalendar

from app.utils.ics import CalendarEvent, build_calendar, build_feed

START = datetime(2027, 3, 14, 13, 0, tzinfo=UTC)


def event(n: int, status: str = "CONFIRMED") -> CalendarEvent:
    return CalendarEvent(
        uid=f"{n}@c3po",
        sequence=n,
        starts_at=START + timedelta(days=n),
        ends_at=START + timedelta(days=n, minutes=30),
        summary=f"Visit {n}; with, marks",
        status=status,
        stamp=START,
    )


def test_one_calendar_holds_every_event_in_order():
    text = build_feed([event(1), event(2, "CANCELLED"), event(3, "TENTATIVE")], name="c3po, Ada", refresh_minutes=90)

    calendar = icalendar.Calendar.from_ical(text)
    assert str(calendar["METHOD"]) == "PUBLISH"
    # TEXT escaping (icalendar hands these properties back raw).
    assert calendar["X-WR-CALNAME"].to_ical() == calendar["NAME"].to_ical() == b"c3po\\, Ada"
    assert calendar["REFRESH-INTERVAL"].dt == timedelta(minutes=90) and str(calendar["X-PUBLISHED-TTL"]) == "PT90M"
    found = [(str(e["UID"]), int(e["SEQUENCE"]), str(e["STATUS"])) for e in calendar.walk("VEVENT")]
    assert found == [("1@c3po", 1, "CONFIRMED"), ("2@c3po", 2, "CANCELLED"), ("3@c3po", 3, "TENTATIVE")]
    assert str(calendar.walk("VEVENT")[0]["SUMMARY"]) == "Visit 1; with, marks"


def test_an_empty_feed_is_a_valid_calendar():
    calendar = icalendar.Calendar.from_ical(build_feed([], name="c3po", refresh_minutes=60))
    assert calendar.walk("VEVENT") == [] and str(calendar["PRODID"]) == "-//c3po//booking//EN"


def test_the_same_events_give_the_same_bytes():
    assert build_feed([event(1)], name="c3po", refresh_minutes=60) == build_feed(
        [event(1)], name="c3po", refresh_minutes=60
    )


def test_an_invite_is_unchanged_by_the_shared_event_lines():
    text = build_calendar(event(1), method="REQUEST")
    assert text.startswith("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//c3po//booking//EN\r\nCALSCALE:GREGORIAN\r\n")
    assert "METHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:1@c3po\r\nSEQUENCE:1\r\n" in text and text.endswith(
        "END:VCALENDAR\r\n"
    )
