"""RFC 5545 output of app/utils/ics.py, read back with the `icalendar` package."""

from datetime import UTC, datetime, timedelta, timezone

import icalendar
import pytest

from app.utils.ics import CalendarEvent, build_calendar

START = datetime(2027, 3, 14, 13, 0, tzinfo=UTC)


def event(**overrides) -> CalendarEvent:
    fields = {
        "uid": "0b7e@c3po",
        "sequence": 3,
        "starts_at": START,
        "ends_at": START + timedelta(minutes=45),
        "summary": "Haircut with Анна",
        "stamp": START - timedelta(days=1),
    }
    return CalendarEvent(**(fields | overrides))


class TestFolding:
    def test_every_line_fits_in_75_octets_and_no_character_is_split(self):
        long_summary = "Стрижка и укладка; с мытьём, " * 8
        text = build_calendar(event(summary=long_summary, description="line one\nline two, with; marks"))

        lines = text.split("\r\n")
        assert all(len(line.encode()) <= 75 for line in lines)
        assert any(line.startswith(" ") for line in lines)  # something was folded
        parsed = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
        assert str(parsed["SUMMARY"]) == long_summary
        assert str(parsed["DESCRIPTION"]) == "line one\nline two, with; marks"

    def test_short_lines_are_left_alone(self):
        text = build_calendar(event(summary="Short"))
        assert "SUMMARY:Short\r\n" in text and "\r\n " not in text


class TestContent:
    @pytest.mark.parametrize("method", ["REQUEST", "CANCEL", "PUBLISH"])
    def test_method_uid_sequence_and_utc_times(self, method):
        offset_start = START.astimezone(timezone(timedelta(hours=-4)))
        text = build_calendar(event(starts_at=offset_start), method=method)

        calendar = icalendar.Calendar.from_ical(text)
        vevent = calendar.walk("VEVENT")[0]
        assert str(calendar["METHOD"]) == method
        assert (str(vevent["UID"]), int(vevent["SEQUENCE"])) == ("0b7e@c3po", 3)
        assert vevent.decoded("DTSTART") == START and "DTSTART:20270314T130000Z" in text
        assert vevent.decoded("DTEND") == START + timedelta(minutes=45)

    def test_attendee_and_organizer_names_are_quoted(self):
        text = build_calendar(
            event(
                organizer_email="anna@example.org",
                organizer_name='Анна "Ножницы"',
                attendee_email="c@example.org",
                attendee_name="Client, Jr.",
            )
        )
        vevent = icalendar.Calendar.from_ical(text).walk("VEVENT")[0]
        assert str(vevent["ORGANIZER"]) == "mailto:anna@example.org"
        assert vevent["ORGANIZER"].params["CN"] == "Анна 'Ножницы'"
        assert vevent["ATTENDEE"].params["CN"] == "Client, Jr."

    def test_naive_times_are_refused(self):
        with pytest.raises(ValueError):
            build_calendar(event(starts_at=datetime(2027, 3, 14, 13, 0)))
