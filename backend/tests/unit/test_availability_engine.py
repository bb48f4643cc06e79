"""The slot engine and its time helpers, without servers: DST, buffers, notice, overrides, rendering."""

import json
import random
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.schemas.availability import Availability, AvailabilityQuery, UtcTexts, render, render_starts
from app.services.scheduling.availability import CACHE_SECONDS, cache_lifetime
from app.services.scheduling.availability_cache import local_midnight
from app.services.scheduling.availability_engine import (
    Ranges,
    ServiceRules,
    Slot,
    StaffCalendar,
    free_slots,
    staff_slots,
)
from app.utils.time import fixed_offset, local_bound_to_utc, local_dates, local_to_utc, timestamp, wall_steps

NEW_YORK, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")
LORD_HOWE, KOLKATA, AUCKLAND = ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Auckland")
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def hm(text: str) -> time:
    return time.fromisoformat(text)


def rules(minutes: int = 60, *, before: int = 0, after: int = 0, notice: int = 0, days: int = 3650, step=None):
    return ServiceRules(
        duration=timedelta(minutes=minutes),
        buffer_before=timedelta(minutes=before),
        buffer_after=timedelta(minutes=after),
        min_notice=timedelta(minutes=notice),
        max_advance=timedelta(days=days),
        step=timedelta(minutes=step) if step else None,
    )


def every_day(*spans: str) -> dict[int, list[tuple[time, time]]]:
    intervals = [(hm(span.split("-")[0]), hm(span.split("-")[1])) for span in spans]
    return {weekday: list(intervals) for weekday in range(7)}


def calendar(zone=NEW_YORK, *spans: str, staff_id=ALICE, **extra) -> StaffCalendar:
    return StaffCalendar(staff_id, zone, weekly=every_day(*(spans or ("09:00-17:00",))), **extra)


def starts(slots: list[Slot]) -> list[datetime]:
    return [slot.starts_at for slot in slots]


def local_starts(slots: list[Slot], zone: ZoneInfo) -> list[str]:
    return [slot.starts_at.astimezone(zone).strftime("%H:%M") for slot in slots]


def day_slots(cal: StaffCalendar, day: date, service=None, now=LONG_AGO) -> list[Slot]:
    """Slots starting on one local date of the calendar's zone."""
    first = local_bound_to_utc(day, time(0), cal.zone)
    following = local_bound_to_utc(day + timedelta(days=1), time(0), cal.zone)
    return staff_slots(cal, service or rules(), first, following, now)


class TestTimeHelpers:
    def test_a_wall_time_in_the_spring_gap_does_not_exist(self):
        assert local_to_utc(date(2026, 3, 8), hm("02:30"), NEW_YORK) is None
        assert local_to_utc(date(2026, 3, 29), hm("02:00"), BERLIN) is None
        assert local_to_utc(date(2026, 3, 8), hm("03:00"), NEW_YORK) == utc("2026-03-08T07:00")

    def test_a_repeated_wall_time_is_its_first_occurrence(self):
        assert local_to_utc(date(2026, 11, 1), hm("01:30"), NEW_YORK) == utc("2026-11-01T05:30")  # still EDT
        assert local_to_utc(date(2026, 10, 25), hm("02:30"), BERLIN) == utc("2026-10-25T00:30")  # still CEST

    def test_a_bound_in_the_gap_is_the_end_of_the_gap(self):
        assert local_bound_to_utc(date(2026, 3, 8), hm("02:30"), NEW_YORK) == utc("2026-03-08T07:00")
        assert local_bound_to_utc(date(2026, 3, 29), hm("02:59"), BERLIN) == utc("2026-03-29T01:00")
        # Lord Howe moves its clocks by half an hour: 02:00 jumps to 02:30 (+10:30 -> +11).
        assert local_bound_to_utc(date(2026, 10, 4), hm("02:10"), LORD_HOWE) == utc("2026-10-03T15:30")

    def test_a_bound_outside_any_gap_is_the_plain_conversion(self):
        assert local_bound_to_utc(date(2026, 7, 1), hm("09:00"), BERLIN) == utc("2026-07-01T07:00")

    @pytest.mark.parametrize(
        ("zone", "day"),
        [
            (NEW_YORK, date(2026, 3, 8)),
            (NEW_YORK, date(2026, 11, 1)),
            (BERLIN, date(2026, 3, 29)),
            (BERLIN, date(2026, 10, 25)),
        ],
    )
    def test_a_day_with_a_clock_change_has_no_fixed_offset(self, zone, day):
        assert fixed_offset(day, zone) is None
        assert fixed_offset(day - timedelta(days=1), zone) is not None
        assert fixed_offset(day + timedelta(days=1), zone) is not None

    def test_fixed_offsets(self):
        assert fixed_offset(date(2026, 7, 1), NEW_YORK) == timedelta(hours=-4)
        assert fixed_offset(date(2026, 1, 1), BERLIN) == timedelta(hours=1)
        assert fixed_offset(date(2026, 3, 8), KOLKATA) == timedelta(hours=5, minutes=30)

    def test_local_dates_cover_the_window_with_a_day_either_side(self):
        days = local_dates(utc("2026-03-08T00:00"), utc("2026-03-09T00:00"), AUCKLAND)
        assert days == [date(2026, 3, 7), date(2026, 3, 8), date(2026, 3, 9), date(2026, 3, 10)]

    @pytest.mark.parametrize(
        "zone", [NEW_YORK, LORD_HOWE, KOLKATA, AUCKLAND, "America/Havana", "America/Santiago", "Asia/Beirut"]
    )
    def test_local_midnight_is_the_first_instant_of_the_date(self, zone):
        zone = ZoneInfo(zone) if isinstance(zone, str) else zone  # Havana and Beirut change at midnight
        for day in (date(2026, 1, 1) + timedelta(days=n) for n in range(366)):
            assert local_midnight(day, zone) == timestamp(local_bound_to_utc(day, time(0), zone)), day

    def test_wall_steps(self):
        assert wall_steps(hm("09:00"), hm("11:00"), timedelta(minutes=45)) == (hm("09:00"), hm("09:45"), hm("10:30"))
        assert wall_steps(hm("09:00"), hm("09:00"), timedelta(minutes=45)) == ()


class TestSpringForward:
    """New York 2026-03-08 and Berlin 2026-03-29: the clocks jump an hour ahead at 02:00."""

    @pytest.mark.parametrize(
        ("zone", "day", "winter", "summer"),
        [
            (
                NEW_YORK,
                date(2026, 3, 8),
                ("2026-03-07T14:00", "2026-03-07T19:00"),
                ("2026-03-08T13:00", "2026-03-08T18:00"),
            ),
            (
                BERLIN,
                date(2026, 3, 29),
                ("2026-03-28T08:00", "2026-03-28T13:00"),
                ("2026-03-29T07:00", "2026-03-29T12:00"),
            ),
        ],
    )
    def test_morning_and_afternoon_hours_stay_put_in_local_time(self, zone, day, winter, summer):
        cal = calendar(zone, "09:00-10:00", "14:00-15:00")

        assert starts(day_slots(cal, day - timedelta(days=1))) == [utc(t) for t in winter]
        assert starts(day_slots(cal, day)) == [utc(t) for t in summer]
        assert local_starts(day_slots(cal, day), zone) == ["09:00", "14:00"]
        assert local_starts(day_slots(cal, day + timedelta(days=1)), zone) == ["09:00", "14:00"]

    @pytest.mark.parametrize(("zone", "day"), [(NEW_YORK, date(2026, 3, 8)), (BERLIN, date(2026, 3, 29))])
    def test_the_missing_hour_is_never_offered(self, zone, day):
        cal = calendar(zone, "00:00-06:00")

        slots = day_slots(cal, day, rules(30))

        assert local_starts(slots, zone) == ["00:00", "00:30", "01:00", "01:30", "03:00", "03:30"] + [
            "04:00",
            "04:30",
            "05:00",
            "05:30",
        ]
        assert all(slot.ends_at - slot.starts_at == timedelta(minutes=30) for slot in slots)

    def test_a_slot_may_end_across_the_gap_and_lasts_its_real_length(self):
        cal = calendar(NEW_YORK, "00:30-04:00")

        slots = day_slots(cal, date(2026, 3, 8))

        # 02:30 does not exist; 03:30 would end at 04:30, after closing.
        assert local_starts(slots, NEW_YORK) == ["00:30", "01:30"]
        assert slots[1].starts_at == utc("2026-03-08T06:30") and slots[1].ends_at == utc("2026-03-08T07:30")
        assert slots[1].ends_at.astimezone(NEW_YORK).strftime("%H:%M") == "03:30"

    def test_a_slot_that_would_end_after_the_gap_but_past_closing_is_not_offered(self):
        cal = calendar(NEW_YORK, "00:30-03:00")  # 01:30 + 60 min = 03:30 on the new time, past 03:00

        assert local_starts(day_slots(cal, date(2026, 3, 8)), NEW_YORK) == ["00:30"]

    def test_hours_ending_inside_the_gap_end_when_the_gap_does(self):
        cal = calendar(NEW_YORK, "01:00-02:30")  # 02:30 never shows: work ends when the clock jumps to 03:00

        slots = day_slots(cal, date(2026, 3, 8), rules(60, step=30))

        assert local_starts(slots, NEW_YORK) == ["01:00"]
        assert slots[0].ends_at == utc("2026-03-08T07:00")

    def test_hours_starting_inside_the_gap_start_at_the_next_existing_step(self):
        cal = calendar(BERLIN, "02:30-05:00")

        assert local_starts(day_slots(cal, date(2026, 3, 29)), BERLIN) == ["03:30"]

    def test_a_half_hour_clock_change(self):
        cal = calendar(LORD_HOWE, "01:00-04:00")

        assert local_starts(day_slots(cal, date(2026, 10, 4), rules(30)), LORD_HOWE) == [
            "01:00",
            "01:30",
            "02:30",
            "03:00",
            "03:30",
        ]


class TestFallBack:
    """New York 2026-11-01 and Berlin 2026-10-25: the clocks go back an hour, one hour happens twice."""

    @pytest.mark.parametrize(
        ("zone", "day", "summer", "winter"),
        [
            (
                NEW_YORK,
                date(2026, 11, 1),
                ("2026-10-31T13:00", "2026-10-31T18:00"),
                ("2026-11-01T14:00", "2026-11-01T19:00"),
            ),
            (
                BERLIN,
                date(2026, 10, 25),
                ("2026-10-24T07:00", "2026-10-24T12:00"),
                ("2026-10-25T08:00", "2026-10-25T13:00"),
            ),
        ],
    )
    def test_morning_and_afternoon_hours_stay_put_in_local_time(self, zone, day, summer, winter):
        cal = calendar(zone, "09:00-10:00", "14:00-15:00")

        assert starts(day_slots(cal, day - timedelta(days=1))) == [utc(t) for t in summer]
        assert starts(day_slots(cal, day)) == [utc(t) for t in winter]
        assert local_starts(day_slots(cal, day + timedelta(days=1)), zone) == ["09:00", "14:00"]

    def test_the_repeated_hour_is_offered_once_on_its_first_occurrence(self):
        cal = calendar(NEW_YORK, "00:00-04:00")

        slots = day_slots(cal, date(2026, 11, 1), rules(30))

        assert local_starts(slots, NEW_YORK) == ["00:00", "00:30", "01:00", "01:30", "02:00", "02:30", "03:00", "03:30"]
        assert starts(slots)[2:5] == [utc("2026-11-01T05:00"), utc("2026-11-01T05:30"), utc("2026-11-01T07:00")]
        assert all(slot.starts_at.astimezone(NEW_YORK).fold == 0 for slot in slots)

    def test_a_slot_spanning_the_repeated_hour_lasts_its_real_length(self):
        cal = calendar(BERLIN, "01:30-04:00")

        slots = day_slots(cal, date(2026, 10, 25))

        # Wall steps 01:30 and 02:30 (both summer time); 03:30 winter time would end at 04:30, past closing.
        assert starts(slots) == [utc("2026-10-24T23:30"), utc("2026-10-25T00:30")]
        assert all(slot.ends_at - slot.starts_at == timedelta(hours=1) for slot in slots)


class TestZones:
    def test_a_half_hour_zone(self):
        assert starts(day_slots(calendar(KOLKATA, "09:00-10:00"), date(2026, 3, 8))) == [utc("2026-03-08T03:30")]

    def test_local_dates_far_from_utc_are_found_from_a_utc_window(self):
        cal = StaffCalendar(ALICE, AUCKLAND, weekly={0: [(hm("09:00"), hm("10:00"))]})  # Mondays only

        # Monday 2026-03-09 09:00 in Auckland (UTC+13) is Sunday 20:00 UTC.
        slots = staff_slots(cal, rules(), utc("2026-03-08T00:00"), utc("2026-03-09T00:00"), LONG_AGO)

        assert starts(slots) == [utc("2026-03-08T20:00")]


class TestStepping:
    def test_slots_step_by_the_duration_from_the_start_of_each_interval(self):
        cal = calendar(BERLIN, "09:00-12:00", "13:15-15:00")

        assert local_starts(day_slots(cal, date(2026, 7, 1), rules(45)), BERLIN) == [
            "09:00",
            "09:45",
            "10:30",
            "11:15",
            "13:15",
            "14:00",
        ]

    def test_a_global_step_overrides_the_duration(self):
        cal = calendar(BERLIN, "09:00-11:00")

        slots = day_slots(cal, date(2026, 7, 1), rules(60, step=20))

        assert local_starts(slots, BERLIN) == ["09:00", "09:20", "09:40", "10:00"]

    def test_slots_stay_aligned_to_the_interval_not_to_the_window(self):
        cal = calendar(BERLIN, "09:00-12:00")

        slots = staff_slots(cal, rules(), utc("2026-07-01T07:30"), utc("2026-07-02T00:00"), LONG_AGO)

        assert local_starts(slots, BERLIN) == ["10:00", "11:00"]

    def test_the_window_is_half_open(self):
        cal = calendar(BERLIN, "09:00-12:00")

        slots = staff_slots(cal, rules(), utc("2026-07-01T07:00"), utc("2026-07-01T09:00"), LONG_AGO)

        assert local_starts(slots, BERLIN) == ["09:00", "10:00"]

    def test_overlapping_hours_still_give_each_start_once_and_in_order(self):
        cal = calendar(BERLIN, "09:00-12:00", "10:30-12:30")  # the API refuses this; rows could still hold it

        assert local_starts(day_slots(cal, date(2026, 7, 1)), BERLIN) == ["09:00", "10:00", "10:30", "11:00", "11:30"]

    def test_window_bounds_with_fractions_of_a_second(self):
        cal = calendar(BERLIN, "09:00-12:00")

        slots = staff_slots(cal, rules(), utc("2026-07-01T07:00:00.5"), utc("2026-07-01T09:00:00.5"), LONG_AGO)

        assert local_starts(slots, BERLIN) == ["10:00", "11:00"]

    def test_an_interval_shorter_than_the_service_offers_nothing(self):
        assert day_slots(calendar(BERLIN, "09:00-09:45"), date(2026, 7, 1)) == []


class TestBookingsAndTimeOff:
    DAY = date(2026, 7, 1)  # Berlin is UTC+2

    def test_both_sides_buffers_keep_slots_apart_from_bookings(self):
        booking = (utc("2026-07-01T07:45"), utc("2026-07-01T09:15"))  # 10:00-11:00 local with 15 min buffers
        cal = calendar(BERLIN, "08:00-14:00", busy=[booking])

        slots = day_slots(cal, self.DAY, rules(60, before=10, after=10, step=15))

        offered = local_starts(slots, BERLIN)
        assert "08:30" in offered and "08:45" not in offered  # 08:45 + 60 + 10 reaches 09:55 > 09:45
        assert "11:15" not in offered and "11:30" in offered  # 11:20 (11:30 - 10) clears 11:15
        assert not any("08:45" <= t <= "11:15" for t in offered)

    def test_touching_ranges_do_not_clash(self):
        cal = calendar(BERLIN, "09:00-12:00", busy=[(utc("2026-07-01T08:00"), utc("2026-07-01T09:00"))])

        assert local_starts(day_slots(cal, self.DAY), BERLIN) == ["09:00", "11:00"]

    def test_a_slot_exactly_filling_the_gap_between_two_bookings(self):
        busy = [(utc("2026-07-01T07:00"), utc("2026-07-01T08:00")), (utc("2026-07-01T09:00"), utc("2026-07-01T10:00"))]
        cal = calendar(BERLIN, "09:00-13:00", busy=busy)

        assert local_starts(day_slots(cal, self.DAY), BERLIN) == ["10:00", "12:00"]

    def test_overlapping_bookings_are_merged(self):
        busy = [(utc("2026-07-01T08:00"), utc("2026-07-01T09:00")), (utc("2026-07-01T08:30"), utc("2026-07-01T09:30"))]
        cal = calendar(BERLIN, "09:00-14:00", busy=busy)

        assert local_starts(day_slots(cal, self.DAY), BERLIN) == ["09:00", "12:00", "13:00"]

    def test_time_off_blocks_the_appointment_but_not_its_buffers(self):
        time_off = [(utc("2026-07-01T10:00"), utc("2026-07-01T11:00"))]  # 12:00-13:00 local
        cal = calendar(BERLIN, "09:00-16:00", time_off=time_off)

        slots = day_slots(cal, self.DAY, rules(60, before=15, after=15))

        assert local_starts(slots, BERLIN) == ["09:00", "10:00", "11:00", "13:00", "14:00", "15:00"]

    def test_time_off_over_several_days(self):
        time_off = [(utc("2026-06-30T00:00"), utc("2026-07-02T22:00"))]
        cal = calendar(BERLIN, "09:00-12:00", time_off=time_off)

        slots = staff_slots(cal, rules(), utc("2026-06-29T00:00"), utc("2026-07-05T00:00"), LONG_AGO)

        assert sorted({s.starts_at.astimezone(BERLIN).date() for s in slots}) == [
            date(2026, 6, 29),
            date(2026, 7, 3),
            date(2026, 7, 4),
        ]


class TestPolicies:
    CAL = calendar(BERLIN, "09:00-13:00")
    WINDOW = (utc("2026-07-01T00:00"), utc("2026-07-05T00:00"))

    def test_min_notice(self):
        now = utc("2026-07-01T06:10")  # 08:10 local

        slots = staff_slots(self.CAL, rules(notice=60), *self.WINDOW, now)

        assert starts(slots)[0] == utc("2026-07-01T08:00")  # 10:00 local; 09:00 is only 50 min away

    def test_min_notice_boundary_is_inclusive_to_the_second(self):
        exactly = staff_slots(self.CAL, rules(notice=60), *self.WINDOW, utc("2026-07-01T06:00"))
        a_moment_late = staff_slots(self.CAL, rules(notice=60), *self.WINDOW, utc("2026-07-01T06:00:00.5"))

        assert starts(exactly)[0] == utc("2026-07-01T07:00")
        assert starts(a_moment_late)[0] == utc("2026-07-01T08:00")

    def test_max_advance(self):
        slots = staff_slots(self.CAL, rules(days=1), *self.WINDOW, utc("2026-07-01T08:00"))  # 10:00 local

        # July 1 from 10:00; July 2 only before 10:00 (a start exactly one day ahead is already too far).
        assert local_starts(slots, BERLIN) == ["10:00", "11:00", "12:00", "09:00"]
        assert starts(slots)[-1] == utc("2026-07-02T07:00")

    def test_nothing_when_notice_pushes_past_the_window(self):
        assert staff_slots(self.CAL, rules(notice=60 * 24 * 10), *self.WINDOW, utc("2026-07-01T00:00")) == []

    def test_nothing_in_the_past(self):
        assert staff_slots(self.CAL, rules(), *self.WINDOW, utc("2026-08-01T00:00")) == []


class TestOverrides:
    WINDOW = (utc("2026-06-30T22:00"), utc("2026-07-03T22:00"))  # July 1-3, Berlin

    def by_day(self, cal):
        slots = staff_slots(cal, rules(), *self.WINDOW, LONG_AGO)
        days: dict[date, list[str]] = {}
        for slot in slots:
            local = slot.starts_at.astimezone(BERLIN)
            days.setdefault(local.date(), []).append(local.strftime("%H:%M"))
        return days

    def test_an_override_replaces_that_day_only(self):
        cal = calendar(BERLIN, "09:00-11:00", overrides={date(2026, 7, 2): [(hm("15:00"), hm("17:00"))]})

        assert self.by_day(cal) == {
            date(2026, 7, 1): ["09:00", "10:00"],
            date(2026, 7, 2): ["15:00", "16:00"],
            date(2026, 7, 3): ["09:00", "10:00"],
        }

    def test_an_empty_override_closes_the_day(self):
        cal = calendar(BERLIN, "09:00-11:00", overrides={date(2026, 7, 2): []})

        assert date(2026, 7, 2) not in self.by_day(cal)

    def test_an_override_opens_a_day_without_weekly_hours(self):
        cal = StaffCalendar(ALICE, BERLIN, weekly={}, overrides={date(2026, 7, 3): [(hm("18:00"), hm("19:00"))]})

        assert self.by_day(cal) == {date(2026, 7, 3): ["18:00"]}

    def test_unsorted_override_intervals(self):
        intervals = [(hm("15:00"), hm("16:00")), (hm("08:00"), hm("09:00"))]
        cal = StaffCalendar(ALICE, BERLIN, weekly={}, overrides={date(2026, 7, 1): intervals})

        assert self.by_day(cal) == {date(2026, 7, 1): ["08:00", "15:00"]}


class TestSeveralStaff:
    def test_slots_are_merged_by_time_then_staff_order(self):
        alice = calendar(BERLIN, "09:00-11:00")
        bob = calendar(NEW_YORK, "03:00-05:00", staff_id=BOB)  # 09:00-11:00 in Berlin on July 1

        slots = free_slots([alice, bob], rules(), utc("2026-07-01T00:00"), utc("2026-07-02T00:00"), LONG_AGO)

        assert [(s.starts_at, s.staff_id) for s in slots] == [
            (utc("2026-07-01T07:00"), ALICE),
            (utc("2026-07-01T07:00"), BOB),
            (utc("2026-07-01T08:00"), ALICE),
            (utc("2026-07-01T08:00"), BOB),
        ]

    def test_one_staff_members_bookings_do_not_block_another(self):
        alice = calendar(BERLIN, "09:00-10:00", busy=[(utc("2026-07-01T07:00"), utc("2026-07-01T08:00"))])
        bob = calendar(BERLIN, "09:00-10:00", staff_id=BOB)

        slots = free_slots([alice, bob], rules(), utc("2026-07-01T00:00"), utc("2026-07-02T00:00"), LONG_AGO)

        assert [s.staff_id for s in slots] == [BOB]

    def test_no_calendars_no_slots(self):
        assert free_slots([], rules(), utc("2026-07-01T00:00"), utc("2026-07-02T00:00"), LONG_AGO) == []


class TestRendering:
    SLOTS = [
        Slot(int(utc("2026-03-08T06:30").timestamp()), int(utc("2026-03-08T07:30").timestamp()), ALICE),
        Slot(int(utc("2026-03-08T07:30").timestamp()), int(utc("2026-03-08T08:30").timestamp()), BOB),
    ]
    WINDOW = (utc("2026-03-08T05:00"), utc("2026-03-09T04:00"))

    def test_utc_with_z_and_no_local_fields_without_a_zone(self):
        body = json.loads(render(self.SLOTS, *self.WINDOW, None))

        assert body == {
            "start": "2026-03-08T05:00:00Z",
            "end": "2026-03-09T04:00:00Z",
            "slots": [
                {"staff_id": str(ALICE), "starts_at": "2026-03-08T06:30:00Z", "ends_at": "2026-03-08T07:30:00Z"},
                {"staff_id": str(BOB), "starts_at": "2026-03-08T07:30:00Z", "ends_at": "2026-03-08T08:30:00Z"},
            ],
        }

    def test_local_renderings_carry_the_offset_of_their_own_instant(self):
        body = json.loads(render(self.SLOTS, *self.WINDOW, NEW_YORK))

        assert body["slots"][0]["starts_at_local"] == "2026-03-08T01:30:00-05:00"
        assert body["slots"][0]["ends_at_local"] == "2026-03-08T03:30:00-04:00"
        assert body["slots"][1]["starts_at_local"] == "2026-03-08T03:30:00-04:00"

    @pytest.mark.parametrize("zone", [None, BERLIN])
    def test_the_rendering_matches_the_documented_schema(self, zone):
        text = render(self.SLOTS, *self.WINDOW, zone)

        parsed = Availability.model_validate_json(text)

        assert [s.starts_at for s in parsed.slots] == [s.starts_at for s in self.SLOTS]
        assert parsed.start == self.WINDOW[0]

    def test_empty(self):
        assert json.loads(render([], *self.WINDOW, None))["slots"] == []

    @pytest.mark.parametrize("zone", [None, NEW_YORK])
    @pytest.mark.parametrize("staff", [[ALICE], [BOB, ALICE, uuid.UUID(int=3)]])
    def test_starts_render_like_their_slots_merged_by_time_then_staff_order(self, zone, staff):
        generator = random.Random(len(staff))
        grid = range(int(utc("2026-03-07T00:00").timestamp()), int(utc("2026-03-10T00:00").timestamp()), 1800)
        starts = {member: sorted(generator.sample(grid, 60)) for member in staff}
        slots = sorted(
            (Slot(start, start + 3600, member) for member in staff for start in starts[member]), key=lambda s: s.start
        )

        assert render_starts(starts, 3600, *self.WINDOW, zone) == render(slots, *self.WINDOW, zone)
        assert render_starts(dict.fromkeys(staff, []), 3600, *self.WINDOW, zone) == render([], *self.WINDOW, zone)

    def test_utc_texts_are_iso_8601_with_z(self):
        texts = UtcTexts()
        instants = [0, 59, 86399, 86400, int(utc("2028-02-29T23:59:59").timestamp()), -1, -86401]
        instants += random.Random(1).sample(range(-(10**9), 4 * 10**9), 500)

        for seconds in instants:
            assert texts[seconds] == datetime.fromtimestamp(seconds, UTC).isoformat()[:19] + "Z"


class TestQuery:
    SERVICE = str(uuid.uuid4())

    def query(self, **params) -> AvailabilityQuery:
        return AvailabilityQuery.model_validate({"service_id": self.SERVICE, **params})

    def test_plain_dates_are_local_midnights_in_tz(self):
        q = self.query(start="2026-03-08", end="2026-03-09", tz="America/New_York")

        assert (q.start_at, q.end_at) == (utc("2026-03-08T05:00"), utc("2026-03-09T04:00"))
        assert q.zone == NEW_YORK

    def test_instants_with_offsets(self):
        q = self.query(start="2026-03-08T00:00:00+01:00", end="2026-03-09T00:00:00Z")

        assert (q.start_at, q.end_at) == (utc("2026-03-07T23:00"), utc("2026-03-09T00:00"))
        assert q.zone is None

    def test_a_plus_sign_lost_to_url_decoding_is_restored(self):
        assert self.query(start="2026-03-08T00:00:00 01:00", end="2026-03-09T00:00Z").start_at == utc(
            "2026-03-07T23:00"
        )

    @pytest.mark.parametrize(
        "params",
        [
            {"start": "2026-03-08T00:00:00", "end": "2026-03-09T00:00:00Z"},
            {"start": "2026-03-08", "end": "2026-03-09T00:00:00Z"},
            {"start": "next monday", "end": "2026-03-09T00:00:00Z"},
            {"start": "2026-03-08", "end": "2026-03-09", "tz": "Mars/Olympus_Mons"},
        ],
    )
    def test_refused(self, params):
        with pytest.raises(ValidationError):
            self.query(**params)


def brute_force(cal: StaffCalendar, service: ServiceRules, window_start, window_end, now) -> list[tuple]:
    """The definition, checked candidate by candidate with datetimes: the reference for the engine."""
    earliest, latest = max(window_start, now + service.min_notice), min(window_end, now + service.max_advance)
    found = set()
    day = (window_start - timedelta(days=2)).date()
    while day <= (window_end + timedelta(days=2)).date():
        for opens, closes in cal.overrides.get(day, cal.weekly.get(day.weekday(), [])):
            close = local_bound_to_utc(day, closes, cal.zone)
            for wall in wall_steps(opens, closes, service.step or service.duration):
                start = local_to_utc(day, wall, cal.zone)
                if start is None or not earliest <= start < latest:
                    continue
                end = start + service.duration
                blocked = (start - service.buffer_before, end + service.buffer_after)
                clashes = any(b0 < blocked[1] and b1 > blocked[0] for b0, b1 in cal.busy)
                off = any(t0 < end and t1 > start for t0, t1 in cal.time_off)
                if end <= close and not clashes and not off:
                    found.add((start, end))
        day += timedelta(days=1)
    return sorted(found)


def random_case(rng):
    zone = rng.choice([NEW_YORK, BERLIN, LORD_HOWE, KOLKATA, AUCKLAND, ZoneInfo("UTC")])
    near = rng.choice([date(2026, 3, 8), date(2026, 3, 29), date(2026, 10, 4), date(2026, 10, 25), date(2026, 11, 1)])
    window_start = datetime.combine(near, time(0), UTC) + timedelta(minutes=rng.randrange(-3 * 1440, 1440))
    window_end = window_start + timedelta(minutes=rng.randrange(60, 6 * 1440))

    def spans(count):
        marks = sorted(rng.sample(range(0, 24 * 60, 15), 2 * count))
        return [(time(a // 60, a % 60), time(b // 60, b % 60)) for a, b in zip(marks[::2], marks[1::2], strict=True)]

    def ranges(count, longest):
        out = []
        for _ in range(count):
            lo = window_start + timedelta(
                minutes=rng.randrange(-600, int((window_end - window_start).total_seconds() // 60) + 3000)
            )
            out.append((lo, lo + timedelta(minutes=rng.randrange(1, longest))))
        return out

    first_day = window_start.date()
    cal = StaffCalendar(
        ALICE,
        zone,
        weekly={d: spans(rng.randrange(0, 3)) for d in range(7)},
        overrides={first_day + timedelta(days=rng.randrange(-1, 5)): spans(rng.randrange(0, 2)) for _ in range(2)},
        busy=ranges(rng.randrange(0, 12), 240),
        time_off=ranges(rng.randrange(0, 3), 600),
    )
    service = rules(
        rng.choice([15, 30, 45, 60, 90, 120]),
        before=rng.choice([0, 0, 5, 15, 30]),
        after=rng.choice([0, 0, 10, 15]),
        notice=rng.choice([0, 60, 600, 3000]),
        days=rng.choice([1, 3, 30]),
        step=rng.choice([None, None, 15, 20]),
    )
    now = window_start + timedelta(minutes=rng.randrange(-3000, 600), seconds=rng.choice([0, 0, 30, 0.25]))
    window_end += timedelta(seconds=rng.choice([0, 0, 0.5]))
    return cal, service, window_start, window_end, now


class TestAgainstTheDefinition:
    """Hundreds of random calendars around clock changes: the engine's answers equal the brute force's."""

    @pytest.mark.parametrize("seed", range(400))
    def test_random_calendar(self, seed):
        cal, service, window_start, window_end, now = random_case(__import__("random").Random(seed))

        engine = [(s.starts_at, s.ends_at) for s in staff_slots(cal, service, window_start, window_end, now)]

        assert engine == brute_force(cal, service, window_start, window_end, now)

    @pytest.mark.parametrize("seed", range(0, 400, 4))
    def test_ranges_as_two_arrays_in_any_order(self, seed):
        """As the database sends them: starts and ends in epoch seconds, each array in its own order."""
        generator = random.Random(seed)
        cal, service, window_start, window_end, now = random_case(random.Random(seed))

        def shuffled(ranges) -> Ranges:
            starts = [timestamp(lo) for lo, _ in ranges]
            ends = [timestamp(hi, ceil=True) for _, hi in ranges]
            generator.shuffle(starts)
            generator.shuffle(ends)
            return Ranges(starts, ends)

        arrays = replace(cal, busy=shuffled(cal.busy), time_off=shuffled(cal.time_off))

        assert list(Ranges([1, 5], [3, 9])) == [(1, 3), (5, 9)]
        assert staff_slots(arrays, service, window_start, window_end, now) == staff_slots(
            cal, service, window_start, window_end, now
        )


class TestCacheLifetime:
    """A cached answer must not outlive its earliest slot's minimum notice."""

    NOW = utc("2026-07-01T08:00")

    def slot_at(self, moment: datetime) -> Slot:
        return Slot(int(moment.timestamp()), int(moment.timestamp()) + 3600, ALICE)

    def test_far_slots_are_cached_for_the_full_time(self):
        assert cache_lifetime([self.slot_at(utc("2026-07-02T08:00"))], rules(notice=60), self.NOW) == CACHE_SECONDS
        assert cache_lifetime([], rules(notice=60), self.NOW) == CACHE_SECONDS

    def test_until_the_first_slot_falls_inside_the_notice(self):
        first = self.slot_at(utc("2026-07-01T09:00:10"))

        assert cache_lifetime([first], rules(notice=60), self.NOW) == 10
