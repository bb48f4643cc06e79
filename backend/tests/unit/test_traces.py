"""Finding and replacing an erased person's values inside stored text and JSON."""

from datetime import UTC, datetime

import icalendar

from app.services.accounts.traces import ERASED, ERASED_NAME, Traces
from app.utils.ics import CalendarEvent, build_calendar, refold, unfold

TRACES = Traces.of(
    email="jane.doe@example.org", full_name="Doe, Jane", phone="+1 555 0199", anonymous_email="gone@deleted.invalid"
)


class TestScrub:
    def test_every_value_in_nested_json_ignoring_case(self):
        value = {"to": "JANE.DOE@example.org", "names": ["doe, jane", {"phone": "call +1 555 0199"}], "n": 3}

        assert TRACES.scrub(value) == {
            "to": "gone@deleted.invalid",
            "names": [ERASED_NAME, {"phone": f"call {ERASED}"}],
            "n": 3,
        }

    def test_regex_characters_in_values_are_literal(self):
        assert TRACES.scrub("jane.doe@example.org janeXdoe@example.org") == "gone@deleted.invalid janeXdoe@example.org"

    def test_the_name_as_a_calendar_file_escapes_it(self):
        event = CalendarEvent(
            uid="1@c3po",
            sequence=0,
            starts_at=datetime(2026, 12, 3, 9, tzinfo=UTC),
            ends_at=datetime(2026, 12, 3, 10, tzinfo=UTC),
            summary="A rather long service name — Doe, Jane",
            attendee_email="jane.doe@example.org",
            attendee_name="Doe, Jane",
        )
        content = build_calendar(event)
        assert "Doe, Jane" not in content.replace("\r\n ", "") or "Doe\\, Jane" in content

        scrubbed = refold(TRACES.scrub(unfold(content)))

        parsed = icalendar.Calendar.from_ical(scrubbed).walk("VEVENT")[0]
        assert str(parsed["SUMMARY"]) == f"A rather long service name — {ERASED_NAME}"
        assert parsed["ATTENDEE"].params["CN"] == ERASED_NAME
        assert str(parsed["ATTENDEE"]) == "mailto:gone@deleted.invalid"
        assert all(len(line.encode()) <= 75 for line in scrubbed.split("\r\n"))

    def test_a_short_phone_is_not_swept_through_every_table(self):
        short = Traces.of(email="a@b.org", full_name="Al", phone="123", anonymous_email="x@deleted.invalid")
        assert short.swept == {"a@b.org": "x@deleted.invalid"}
        assert short.scrub("call 123, 1234") == f"call {ERASED}, 1234"  # where the row is known to be about them
        assert set(TRACES.swept) == {"jane.doe@example.org", "+1 555 0199"}


class TestFolding:
    def test_unfold_then_refold_is_the_original(self):
        line = "DESCRIPTION:" + "x" * 200
        folded = refold(line + "\r\n")
        assert folded != line + "\r\n" and unfold(folded) == line + "\r\n"
        assert refold(unfold(folded)) == folded


class TestWholeValues:
    def test_a_name_inside_a_word_is_left_alone(self):
        short = Traces.of(email="al@b.org", full_name="Al", phone=None, anonymous_email="x@deleted.invalid")
        assert short.scrub("Al will call; Alternative; al@b.org; pal@b.org") == (
            f"{ERASED_NAME} will call; Alternative; x@deleted.invalid; pal@b.org"
        )
