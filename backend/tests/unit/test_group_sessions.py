"""Group session availability, without servers: seats left per slot, a session offered at its start
only while it has seats and nothing else clashes, and its rendering."""

import json
import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from app.schemas.availability import Availability, render_seats
from app.services.scheduling.availability_engine import Ranges, ServiceRules, StaffCalendar
from app.services.scheduling.group_sessions import SeatSlot, Session, seat_slots, session_key

SERVICE, ALICE = uuid.UUID(int=7), uuid.UUID(int=1)
DAY = datetime(2026, 7, 1, tzinfo=UTC)
WINDOW = (DAY, DAY + timedelta(days=1))
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def at(hour: int, minute: int = 0) -> int:
    return int((DAY + timedelta(hours=hour, minutes=minute)).timestamp())


def rules(step: int | None = None) -> ServiceRules:
    return ServiceRules(
        duration=timedelta(minutes=60),
        buffer_before=timedelta(0),
        buffer_after=timedelta(0),
        min_notice=timedelta(0),
        max_advance=timedelta(days=3650),
        step=timedelta(minutes=step) if step else None,
    )


def calendar(busy: list[tuple[int, int]] = ()) -> StaffCalendar:
    hours = {weekday: [(time(9), time(13))] for weekday in range(7)}
    lows, highs = [lo for lo, _ in busy], [hi for _, hi in busy]
    return StaffCalendar(ALICE, ZoneInfo("UTC"), weekly=hours, busy=Ranges(lows, highs))


def session(start: int, seats: int, length: int = 3600) -> Session:
    key = session_key(SERVICE, ALICE, start, (start, start + length))
    return Session([ALICE, key, seats, start, start, start + length])


def slots(busy=(), sessions=(), step=None, capacity=10) -> list[SeatSlot]:
    return seat_slots([calendar(list(busy))], list(sessions), SERVICE, capacity, rules(step), *WINDOW, LONG_AGO)


class TestSeatsLeft:
    def test_a_fresh_day_offers_every_start_with_every_seat(self):
        assert [(s.start, s.seats_left) for s in slots()] == [(at(h), 10) for h in (9, 10, 11, 12)]

    def test_a_session_with_seats_is_offered_at_its_start_with_what_is_left(self):
        found = slots(sessions=[session(at(10), 3)], step=30)

        assert [(s.start, s.seats_left) for s in found] == [
            (at(9), 10),
            (at(10), 7),
            (at(11), 10),
            (at(11, 30), 10),
            (at(12), 10),
        ]

    def test_a_full_session_is_not_offered(self):
        assert at(10) not in [s.start for s in slots(sessions=[session(at(10), 10)])]

    def test_lowered_capacity_below_the_seats_taken_is_full(self):
        assert at(10) not in [s.start for s in slots(sessions=[session(at(10), 5)], capacity=4)]

    def test_a_session_of_another_length_is_not_offered(self):
        found = slots(sessions=[session(at(10), 2, length=5400)])

        assert [s.start for s in found] == [at(9), at(12)]

    def test_a_session_overlapped_by_another_booking_is_not_offered(self):
        found = slots(busy=[(at(10, 30), at(11, 30))], sessions=[session(at(10), 2)], step=30)

        assert at(10) not in [s.start for s in found]
        assert [s.start for s in found] == [at(9), at(11, 30), at(12)]

    def test_two_sessions_side_by_side_each_offered(self):
        found = slots(sessions=[session(at(10), 9), session(at(11), 1)])

        assert [(s.start, s.seats_left) for s in found] == [(at(9), 10), (at(10), 1), (at(11), 9), (at(12), 10)]


class TestRendering:
    def test_each_slot_carries_its_seats_left_and_matches_the_schema(self):
        text = render_seats([(at(9), at(10), ALICE, 10), (at(10), at(11), ALICE, 3)], *WINDOW, None)

        body = json.loads(text)
        assert [s["seats_left"] for s in body["slots"]] == [10, 3]
        assert body["slots"][0] == {
            "staff_id": str(ALICE),
            "starts_at": "2026-07-01T09:00:00Z",
            "ends_at": "2026-07-01T10:00:00Z",
            "seats_left": 10,
        }
        assert [s.seats_left for s in Availability.model_validate_json(text).slots] == [10, 3]

    def test_with_a_zone_the_local_times_come_before_the_seats(self):
        body = json.loads(render_seats([(at(9), at(10), ALICE, 2)], *WINDOW, ZoneInfo("Europe/Berlin")))

        assert body["slots"][0]["starts_at_local"] == "2026-07-01T11:00:00+02:00"
        assert body["slots"][0]["seats_left"] == 2
