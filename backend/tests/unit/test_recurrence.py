"""The RRULE subset of recurring series: parsing, and occurrences at the same local wall time."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.errors import InvalidRecurrence, SlotNotOffered
from app.services.booking.series import MAX_OCCURRENCES, Rule, occurrences, parse_rrule

NEW_YORK = ZoneInfo("America/New_York")


class TestParse:
    @pytest.mark.parametrize(
        ("text", "rule"),
        [
            ("FREQ=WEEKLY;INTERVAL=1;COUNT=6", Rule("WEEKLY", 1, count=6)),
            ("RRULE:freq=daily;count=2", Rule("DAILY", 1, count=2)),
            ("FREQ=MONTHLY;INTERVAL=3;UNTIL=20271231", Rule("MONTHLY", 3, until=date(2027, 12, 31))),
            ("FREQ=DAILY;UNTIL=20270105T170000Z", Rule("DAILY", until=datetime(2027, 1, 5, 17, tzinfo=UTC))),
        ],
    )
    def test_the_subset(self, text, rule):
        assert parse_rrule(text) == rule

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "FREQ=HOURLY;COUNT=2",
            "FREQ=DAILY;COUNT=2;COUNT=3",
            "FREQ=DAILY;COUNT",
            "FREQ=DAILY;INTERVAL=0;COUNT=2",
            "FREQ=DAILY;INTERVAL=-1;COUNT=2",
            f"FREQ=DAILY;COUNT={MAX_OCCURRENCES + 1}",
            "FREQ=DAILY;UNTIL=20271340",
            "FREQ=DAILY;UNTIL=20270105T170000",
            "FREQ=DAILY;BYMONTHDAY=1;COUNT=2",
        ],
    )
    def test_anything_else_is_refused(self, text):
        with pytest.raises(InvalidRecurrence):
            parse_rrule(text)


class TestOccurrences:
    def test_weekly_keeps_the_wall_time_across_dst(self):
        first = datetime(2027, 3, 1, 9, 0, tzinfo=NEW_YORK)  # EST; DST starts 14 March

        starts = occurrences(Rule("WEEKLY", count=4), first, NEW_YORK)

        assert [s.astimezone(NEW_YORK).hour for s in starts] == [9] * 4
        assert [s.hour for s in starts] == [14, 14, 13, 13]  # UTC

    def test_monthly_skips_months_without_the_day(self):
        first = datetime(2027, 1, 31, 10, tzinfo=UTC)

        starts = occurrences(Rule("MONTHLY", count=3), first, ZoneInfo("UTC"))

        assert [s.date() for s in starts] == [date(2027, 1, 31), date(2027, 3, 31), date(2027, 5, 31)]

    def test_until_is_inclusive(self):
        first = datetime(2027, 1, 4, 10, tzinfo=UTC)

        by_date = occurrences(Rule("DAILY", until=date(2027, 1, 6)), first, ZoneInfo("UTC"))
        by_instant = occurrences(Rule("DAILY", until=datetime(2027, 1, 6, 10, tzinfo=UTC)), first, ZoneInfo("UTC"))

        assert len(by_date) == len(by_instant) == 3

    def test_until_before_the_first_is_refused(self):
        with pytest.raises(InvalidRecurrence):
            occurrences(Rule("DAILY", until=date(2027, 1, 1)), datetime(2027, 1, 4, tzinfo=UTC), ZoneInfo("UTC"))

    def test_at_most_52(self):
        first = datetime(2027, 1, 4, 10, tzinfo=UTC)

        assert len(occurrences(Rule("WEEKLY", until=date(2027, 12, 31)), first, ZoneInfo("UTC"))) == 52
        with pytest.raises(InvalidRecurrence):
            occurrences(Rule("DAILY", until=date(2027, 12, 31)), first, ZoneInfo("UTC"))

    def test_a_skipped_wall_time_is_named(self):
        first = datetime(2027, 3, 7, 2, 30, tzinfo=NEW_YORK)  # 14 March 02:30 does not exist

        with pytest.raises(SlotNotOffered) as caught:
            occurrences(Rule("WEEKLY", count=3), first, NEW_YORK)

        assert [s[:10] for s in caught.value.extra["occurrences"]] == ["2027-03-14"]


class TestBoundedExpansion:
    """Expansion stops at the horizon whatever the rule: no loop runs past it, no date overflows."""

    @pytest.mark.parametrize("freq", ["MONTHLY", "DAILY", "WEEKLY"])
    def test_the_year_9999_is_refused_not_looped_over(self, freq):
        with pytest.raises(SlotNotOffered):
            occurrences(Rule(freq, count=3), datetime(9999, 12, 28, 10, tzinfo=UTC), ZoneInfo("UTC"))

    def test_a_monthly_series_stops_at_the_horizon(self):
        first = datetime(2027, 1, 31, 10, tzinfo=UTC)

        with pytest.raises(SlotNotOffered) as caught:
            occurrences(Rule("MONTHLY", count=52), first, ZoneInfo("UTC"), horizon=first + timedelta(days=100))

        assert caught.value.extra["occurrences"] == ["2027-05-31T10:00:00Z"]

    def test_a_series_that_ends_before_the_horizon_is_fine(self):
        first = datetime(2027, 1, 4, 10, tzinfo=UTC)

        starts = occurrences(Rule("WEEKLY", count=4), first, ZoneInfo("UTC"), horizon=first + timedelta(days=21))

        assert len(starts) == 4
