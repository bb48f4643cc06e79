"""Which resource a booking takes (`ResourceBusy`, pure) and how a slot names it (`render`)."""

import json
import uuid
from datetime import UTC, datetime

from app.schemas.availability import Availability, render
from app.services.scheduling.availability import ResourceSlot
from app.services.scheduling.resource_busy import ResourceBusy

A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))
SESSION = uuid.UUID(int=99)


def busy(**ranges) -> ResourceBusy:
    named = {"a": A, "b": B, "c": C}
    return ResourceBusy(ids=[A, B, C], ranges={named[k]: v for k, v in ranges.items()}, needed=True)


class TestFirstFree:
    def test_the_first_in_order_that_is_free(self):
        taken = busy(a=[(100, 200, None)], b=[(150, 160, None)])
        assert taken.first_free(120, 180) == C
        assert taken.first_free(200, 300) == A  # half-open: touching is free
        assert taken.first_free(50, 100) == A
        assert taken.first_free(155, 158, prefer=B) == C

    def test_overlapping_and_nested_ranges_merge(self):
        taken = busy(a=[(0, 100, None), (50, 80, None), (90, 300, None), (400, 500, None)])
        assert taken.is_free(A, 300, 400)
        assert not taken.is_free(A, 299, 301)
        assert not taken.is_free(A, 450, 460)

    def test_a_preferred_resource_wins_when_free(self):
        assert busy().first_free(0, 10, prefer=C) == C
        assert busy(c=[(0, 10, None)]).first_free(0, 10, prefer=C) == A
        assert busy().first_free(0, 10, prefer=uuid.UUID(int=7)) == A  # not in the set: ignored

    def test_a_seat_ignores_its_own_session(self):
        taken = busy(a=[(0, 100, SESSION)], b=[(0, 100, None)])
        assert taken.first_free(0, 100, prefer=A, session_key=SESSION) == A
        assert taken.first_free(0, 100, session_key=uuid.UUID(int=5)) == C

    def test_ranges_added_in_the_transaction_count(self):
        taken = busy()
        assert taken.first_free(0, 100) == A
        taken.add(A, 0, 100, None)
        assert taken.first_free(50, 60) == B
        taken.restrict([C])
        assert taken.first_free(200, 300) == C
        assert busy(a=[], b=[], c=[]).restrict([]) is None and ResourceBusy(ids=[]).first_free(0, 1) is None


def test_resource_slots_render_as_documented():
    start, end = datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 10, tzinfo=UTC)
    staff = uuid.uuid4()
    slots = [ResourceSlot(1773050400, 1773054000, staff, A), ResourceSlot(1773054000, 1773057600, staff, B)]
    text = render(slots, start, end, None)
    parsed = Availability.model_validate_json(text)
    assert [s.resource_id for s in parsed.slots] == [A, B]
    assert json.loads(text)["slots"][0] == {
        "staff_id": str(staff),
        "starts_at": "2026-03-09T10:00:00Z",
        "ends_at": "2026-03-09T11:00:00Z",
        "resource_id": str(A),
    }
