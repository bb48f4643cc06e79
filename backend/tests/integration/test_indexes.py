"""Every list's filters and sort order are served by an index: `EXPLAIN` of the very statement each
list's service issues (captured as it runs), on tables seeded with enough rows and ANALYZEd that the
planner prefers an index only where one really serves (no `enable_seqscan = off`)."""

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import event, select, text

from app.database import get_engine
from app.models import Role, User
from app.services import audit
from app.services.accounts.users import list_users
from app.services.booking.appointments import list_appointments
from app.services.scheduling.catalogue import list_services, list_staff
from app.services.scheduling.schedules import list_overrides, list_time_off

USERS, STAFF, APPOINTMENTS, AUDIT, SERVICES, BLOCKS = 5000, 500, 20000, 20000, 2000, 5000

SEED = [
    f"""INSERT INTO users (id, email, hashed_password, full_name, timezone, locale, role, is_active, created_at)
    SELECT gen_random_uuid(), 'u' || i || '@seed.example', 'x', 'User ' || md5(i::text), 'UTC', 'en',
           CASE WHEN i <= {STAFF} THEN 'staff' WHEN i % 100 = 0 THEN 'admin' ELSE 'user' END,
           true, timestamptz '2026-01-01' + i * interval '1 minute'
    FROM generate_series(1, {USERS}) AS i""",
    f"""INSERT INTO services (id, name, description, duration_minutes, buffer_before_minutes, buffer_after_minutes,
        price, currency, requires_confirmation, min_notice_minutes, max_advance_days, is_active)
    SELECT gen_random_uuid(), 'Service ' || md5(i::text), '', 30, 0, 0, 0, 'EUR', false, 60, 90, i % 10 <> 0
    FROM generate_series(1, {SERVICES}) AS i""",
    """CREATE TEMP TABLE seed_people ON COMMIT DROP AS
    SELECT id, role, row_number() OVER (PARTITION BY role ORDER BY email) AS n FROM users""",
    """INSERT INTO appointment_series (id, rrule, client_id, staff_id, service_id)
    SELECT gen_random_uuid(), 'FREQ=WEEKLY;COUNT=4', c.id, s.id, (SELECT id FROM services LIMIT 1)
    FROM generate_series(1, 200) AS i
    JOIN seed_people c ON c.role = 'user' AND c.n = i JOIN seed_people s ON s.role = 'staff' AND s.n = i""",
    f"""INSERT INTO appointments (id, client_id, staff_id, service_id, starts_at, ends_at, blocked_from,
        blocked_until, status, sequence)
    SELECT gen_random_uuid(), c.id, s.id, (SELECT id FROM services LIMIT 1), at, at + interval '30 minutes',
           at, at + interval '30 minutes', (ARRAY['pending', 'confirmed', 'completed', 'cancelled'])[1 + i % 4], 0
    FROM generate_series(1, {APPOINTMENTS}) AS i
    CROSS JOIN LATERAL (SELECT timestamptz '2026-01-01' + i * interval '30 minutes' AS at) AS t
    JOIN seed_people c ON c.role = 'user' AND c.n = 1 + i % 4000
    JOIN seed_people s ON s.role = 'staff' AND s.n = 1 + i % 50""",
    """UPDATE appointments SET series_id = (SELECT id FROM appointment_series ORDER BY id LIMIT 1)
    WHERE id IN (SELECT id FROM appointments ORDER BY id LIMIT 4)""",
    f"""INSERT INTO audit_log (actor_id, action, entity_type, entity_id, created_at)
    SELECT c.id, CASE WHEN i % 500 = 0 THEN 'appointment.cancel' ELSE 'action.' || i % 50 END,
           'appointment', md5(i::text), timestamptz '2026-01-01' + i * interval '1 minute'
    FROM generate_series(1, {AUDIT}) AS i JOIN seed_people c ON c.role = 'user' AND c.n = 1 + i % 4000""",
    f"""INSERT INTO time_off (id, staff_id, starts_at, ends_at, reason)
    SELECT gen_random_uuid(), s.id, at, at + interval '1 day', 'off'
    FROM generate_series(1, {BLOCKS}) AS i
    CROSS JOIN LATERAL (SELECT timestamptz '2026-01-01' + (i / {STAFF}) * interval '2 days' AS at) AS t
    JOIN seed_people s ON s.role = 'staff' AND s.n = 1 + i % {STAFF}""",
    f"""INSERT INTO date_overrides (id, staff_id, date, intervals)
    SELECT gen_random_uuid(), s.id, date '2026-01-01' + i / {STAFF}, '[]'::jsonb
    FROM generate_series(1, {BLOCKS}) AS i JOIN seed_people s ON s.role = 'staff' AND s.n = 1 + i % {STAFF}""",
    "INSERT INTO service_staff (service_id, staff_id) SELECT (SELECT id FROM services LIMIT 1), id FROM seed_people"
    " WHERE role = 'staff' AND n <= 50",
]


@pytest.fixture
async def world(session) -> dict[str, Any]:
    for statement in SEED:
        await session.execute(text(statement))
    await session.commit()
    await session.execute(text("ANALYZE"))
    await session.commit()
    people = {
        role: (await session.scalars(select(User).where(User.role == role).order_by(User.email).limit(1))).one()
        for role in (Role.admin, Role.staff, Role.user)
    }
    service_id = await session.scalar(text("SELECT service_id FROM service_staff LIMIT 1"))
    series_id = await session.scalar(text("SELECT series_id FROM appointments WHERE series_id IS NOT NULL LIMIT 1"))
    return {**people, "service_id": service_id, "series_id": series_id}


async def sent_statements(call: Callable[[], Awaitable[Any]]) -> list[tuple[str, Any]]:
    """Every statement `call` sends through the engine, with its parameters, as sent."""
    sent: list[tuple[str, Any]] = []

    def capture(_connection, _cursor, statement, parameters, _context, _executemany) -> None:
        sent.append((statement, parameters))

    engine = get_engine().sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        await call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


async def page_statement(call: Callable[[], Awaitable[Any]]) -> tuple[str, Any]:
    """The page query (the one with a LIMIT) the service runs, with its parameters, as sent."""
    sent = await sent_statements(call)
    pages = [(statement, parameters) for statement, parameters in sent if " LIMIT " in statement]
    assert pages, sent
    return pages[0]


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


async def explain(session, call: Callable[[], Awaitable[Any]]) -> list[dict[str, Any]]:
    statement, parameters = await page_statement(call)
    connection = await session.connection()
    raw = (await connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)).scalar_one()
    await session.rollback()
    return plan_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])


def indexes(nodes: list[dict[str, Any]]) -> set[str]:
    return {node["Index Name"] for node in nodes if "Index Name" in node}


def sorts(nodes: list[dict[str, Any]]) -> list[str]:
    """Full sorts of the rows (an Incremental Sort on a tie-breaker after an ordered scan is fine)."""
    return [node["Node Type"] for node in nodes if node["Node Type"] == "Sort"]


CASES: dict[str, tuple[Callable[[Any, dict], Awaitable[Any]], set[str] | tuple[set[str], ...], bool]] = {
    # name: (the service call, the indexes its plan must use (or a choice of such sets), and whether the
    # index also gives the order, with no full sort)
    "appointments, admin, all": (lambda s, w: list_appointments(s, w["admin"]), {"ix_appointments_starts"}, True),
    "appointments, admin, by status": (
        lambda s, w: list_appointments(s, w["admin"], status="pending"),
        {"ix_appointments_starts"},
        True,
    ),
    "appointments, admin, by staff": (
        lambda s, w: list_appointments(s, w["admin"], staff_id=w["staff"].id),
        {"ix_appointments_staff_starts"},
        True,
    ),
    "appointments, admin, by client": (
        lambda s, w: list_appointments(s, w["admin"], client_id=w["user"].id),
        {"ix_appointments_client_starts"},
        False,  # a client's few appointments: the tie-breaker `id` is sorted after the index scan
    ),
    "appointments, admin, from a date": (
        lambda s, w: list_appointments(s, w["admin"], start=datetime(2026, 6, 1, tzinfo=UTC)),
        {"ix_appointments_starts"},
        True,
    ),
    "appointments, admin, by series": (
        lambda s, w: list_appointments(s, w["admin"], series_id=w["series_id"]),
        {"ix_appointments_series_id"},
        False,
    ),
    "appointments, mine (client or staff)": (
        lambda s, w: list_appointments(s, w["staff"]),
        # Either the client's and the staff member's rows merged (BitmapOr) then sorted, or the
        # start index walked in order, whichever the statistics make cheaper.
        ({"ix_appointments_client_starts", "ix_appointments_staff_starts"}, {"ix_appointments_starts"}),
        False,
    ),
    "audit log, all": (lambda s, w: audit.search(s), {"ix_audit_log_created_at"}, True),
    "audit log, by action": (
        lambda s, w: audit.search(s, action="appointment.cancel"),
        {"ix_audit_log_action_created"},
        False,  # a rare action: its few entries are sorted after the index scan
    ),
    "audit log, by entity": (
        lambda s, w: audit.search(s, entity_type="appointment", entity_id="c4ca4238a0b923820dcc509a6f75849b"),
        {"ix_audit_log_entity"},
        False,
    ),
    "audit log, by actor": (lambda s, w: audit.search(s, actor_id=w["user"].id), {"ix_audit_log_actor_id"}, False),
    "users, all": (lambda s, w: list_users(s, role=None, q=None, limit=50, offset=0), {"ix_users_created"}, True),
    "users, by role": (
        lambda s, w: list_users(s, role=Role.staff, q=None, limit=50, offset=0),
        {"ix_users_role_created"},
        True,
    ),
    "staff": (lambda s, w: list_staff(s, service_id=None, limit=50, offset=0), {"ix_users_role_name"}, True),
    "services": (
        lambda s, w: list_services(s, include_inactive=True, staff_id=None, limit=50, offset=0),
        {"ix_services_name"},
        True,
    ),
    "time off of a staff member": (
        lambda s, w: list_time_off(
            s, w["admin"], w["staff"].id, start=datetime(2026, 3, 1, tzinfo=UTC), end=None, limit=50, offset=0
        ),
        {"ix_time_off_staff_range"},
        False,
    ),
    "date overrides of a staff member": (
        lambda s, w: list_overrides(
            s, w["admin"], w["staff"].id, first=date(2026, 1, 5), last=None, limit=50, offset=0
        ),
        {"uq_date_overrides_staff_date"},
        False,  # a few a month: the page is sorted after the index scan
    ),
}


@pytest.mark.parametrize("case", CASES)
async def test_the_list_is_served_by_its_index(session, world, case):
    call, expected, ordered = CASES[case]

    nodes = await explain(session, lambda: call(session, world))

    plan = [(node["Node Type"], node.get("Index Name"), node.get("Sort Key")) for node in nodes]
    choices = expected if isinstance(expected, tuple) else (expected,)
    assert any(choice <= indexes(nodes) for choice in choices), plan
    if ordered:
        assert not sorts(nodes), plan
