"""The lean path of `POST /appointments` (`services/booking/single.py`): what it reads, how it locks,
how it hands the outbox to arq. Its answers are `test_booking.py`'s (every test there runs it)."""

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import pytest
from arq.jobs import Job, JobStatus
from sqlalchemy import select, text
from sqlalchemy.util import greenlet_spawn

from app.config import get_settings
from app.database import _ping, driver_connection, get_engine, get_sessionmaker, unit_of_work
from app.models import Appointment, DateOverride, OutboxMessage, Reminder, TimeOff, User
from app.redis import get_redis
from app.services.booking import idempotency, single
from app.services.messaging import outbox
from app.services.scheduling.availability_queries import calendar_from_row, load_calendars
from app.services.scheduling.calendar_lock import CALENDAR_LOCK_CLASS, calendar_lock_key
from tests.assertions import assert_problem
from tests.factories import create_user
from tests.scheduling import URL, add_appointment, booking_body, create_service, create_staff, days_ahead, headers_for


def utc(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


@pytest.fixture
async def staff(session):
    return await create_staff(session, timezone="Asia/Tokyo", hours=(("08:00", "12:00"), ("13:00", "19:00")))


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff], duration=30, buffer_before=10, buffer_after=15)


@pytest.fixture
async def customer(session):
    return await create_user(session)


class TestTheRead:
    async def test_sees_the_calendar_load_calendars_sees(self, session, staff, service, customer):
        day = days_ahead(10)
        starts_at = utc(day, 3)
        other = await create_service(session, [staff], name="Long", duration=90)
        await add_appointment(session, customer, staff, service, starts_at - timedelta(hours=2))
        await add_appointment(session, customer, staff, other, starts_at + timedelta(hours=5), status="pending")
        await add_appointment(session, customer, staff, service, starts_at + timedelta(hours=1), status="cancelled")
        await add_appointment(session, customer, staff, service, starts_at - timedelta(days=5))  # out of the window
        session.add_all(
            [
                TimeOff(
                    staff_id=staff.id, starts_at=starts_at + timedelta(hours=7), ends_at=starts_at + timedelta(hours=9)
                ),
                TimeOff(
                    staff_id=staff.id, starts_at=starts_at + timedelta(hours=8), ends_at=starts_at + timedelta(hours=10)
                ),
                DateOverride(
                    staff_id=staff.id, date=day + timedelta(days=1), intervals=[{"start": "10:00", "end": "11:30"}]
                ),
                DateOverride(staff_id=staff.id, date=day - timedelta(days=1), intervals=[]),
            ]
        )
        await session.commit()
        lo, hi = starts_at - timedelta(days=1), starts_at + timedelta(days=1)
        staff_id, service_name = staff.id, service.name

        connection = await driver_connection(session)
        row = await connection.fetchrow(
            single._READ,
            customer.id,
            customer.id,
            service.id,
            staff.id,
            lo,
            hi,
            (lo - timedelta(days=2)).date(),
            (hi + timedelta(days=2)).date(),
        )
        (expected,) = await load_calendars(session, {staff.id: "Asia/Tokyo"}, lo, hi, margin=timedelta(minutes=55))
        await session.rollback()

        read = calendar_from_row(staff_id, row["zone"], row)
        assert row["zone"] == "Asia/Tokyo" and row["service_name"] == service_name and row["actor_live"]
        assert read == expected
        assert (
            len(read.busy) == 2 and len(read.time_off) == 1 and len(read.overrides) == 2
        )  # merged, cancelled left out


class TestTheCalendarLock:
    @pytest.mark.parametrize("keyed", [True, False], ids=["with a key (tried in the claim)", "without a key"])
    async def test_a_booking_waits_for_a_calendar_change_in_progress_and_sees_it(
        self, client, session, staff, service, customer, keyed
    ):
        """The claim only *tries* the shared lock; held exclusively (a time off being written), the
        booking takes the blocking lock, waits, then reads the time off and is refused."""
        starts_at = utc(days_ahead(4), 2)  # 11:00 in Tokyo
        headers = await headers_for(customer)
        if keyed:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        writer = await asyncpg.connect(_plain_url())
        try:
            transaction = writer.transaction()
            await transaction.start()
            await writer.execute(
                "SELECT pg_advisory_xact_lock($1, $2)", CALENDAR_LOCK_CLASS, calendar_lock_key(staff.id)
            )
            await writer.execute(
                "INSERT INTO time_off (id, staff_id, starts_at, ends_at) VALUES ($1, $2, $3, $4)",
                uuid.uuid4(),
                staff.id,
                starts_at - timedelta(hours=1),
                starts_at + timedelta(hours=1),
            )
            booking = asyncio.create_task(
                client.post(URL, json=booking_body(service, staff, starts_at), headers=headers)
            )
            assert await _waits_on_a_lock(writer, booking)
            await transaction.commit()
        finally:
            await writer.close()
        assert_problem(await booking, 422, "slot_not_offered")
        assert not (await session.scalars(select(Appointment))).all()

    async def test_the_lock_is_shared_between_bookings(self, client, session, staff, service, customer):
        """Two bookings of one calendar hold the lock at once: neither waits for the other's commit."""
        connection = await driver_connection(session)
        await connection.execute(
            "SELECT pg_advisory_xact_lock_shared($1, $2)", CALENDAR_LOCK_CLASS, calendar_lock_key(staff.id)
        )
        headers = await headers_for(customer) | {"Idempotency-Key": uuid.uuid4().hex}
        response = await client.post(URL, json=booking_body(service, staff, utc(days_ahead(4), 2)), headers=headers)
        await session.rollback()
        assert response.status_code == 201, response.text


class TestTheRoute:
    """A booking that is not a plain slot (here a group session's) takes `booking.create`; the hot
    path decides in the statement that would take the calendar lock, and then takes none."""

    @pytest.mark.parametrize("capacity, locked", [(1, 1), (5, 0)], ids=["plain: locked", "group session: not"])
    async def test_the_lock_statement_locks_only_a_plain_booking(self, session, staff, service, capacity, locked):
        service.capacity = capacity
        await session.commit()
        connection = await driver_connection(session)
        lock = (CALENDAR_LOCK_CLASS, calendar_lock_key(staff.id))
        routed = await connection.fetchval(single._LOCK_UNLESS_FULL, *lock, service.id, staff.id)
        assert routed is (locked == 0)
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            == locked
        )
        await session.rollback()

    @pytest.mark.parametrize("capacity, expected", [(1, True), (5, None)], ids=["plain: tried", "group: not tried"])
    async def test_the_claim_tries_the_lock_only_for_a_plain_booking(
        self, session, staff, service, customer, capacity, expected
    ):
        service.capacity = capacity
        await session.commit()
        try_lock = idempotency.TryLock(CALENDAR_LOCK_CLASS, calendar_lock_key(staff.id), service.id, staff.id)
        claimed, locked = await idempotency.claim(session, customer.id, uuid.uuid4().hex, "print", try_lock=try_lock)
        assert claimed and locked is expected
        connection = await driver_connection(session)
        held = await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == (1 if expected else 0)
        await session.rollback()

    @pytest.mark.parametrize("keyed", [True, False], ids=["with a key", "without a key"])
    async def test_a_group_session_books_through_the_full_path(self, client, session, staff, service, customer, keyed):
        service.capacity = 3
        await session.commit()
        headers = await headers_for(customer)
        if keyed:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        body = booking_body(service, staff, utc(days_ahead(4), 2))
        first = await client.post(URL, json=body, headers=headers)
        assert first.status_code == 201, first.text
        again = await client.post(URL, json=body, headers=headers)
        if keyed:  # the full path stored its answer on the key the hot path claimed
            assert again.status_code == 201 and again.json() == first.json()
            assert again.headers["Idempotent-Replayed"] == "true"
        else:
            assert again.status_code == 409
        assert len((await session.scalars(select(Appointment))).all()) == 1


class TestTheWrites:
    async def test_one_statement_writes_everything_a_booking_writes(self, client, session, staff, service, customer):
        headers = await headers_for(customer) | {"Idempotency-Key": uuid.uuid4().hex}
        starts_at = utc(days_ahead(4), 2)
        response = await client.post(URL, json=booking_body(service, staff, starts_at), headers=headers)
        assert response.status_code == 201, response.text
        appointment = await session.get(Appointment, uuid.UUID(response.json()["id"]))
        assert appointment is not None and appointment.blocked_from == starts_at - timedelta(minutes=10)
        reminders = (await session.scalars(select(Reminder).order_by(Reminder.offset_minutes))).all()
        assert [(r.offset_minutes, r.due_at) for r in reminders] == [
            (60, starts_at - timedelta(hours=1)),
            (1440, starts_at - timedelta(days=1)),
        ]
        emails = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        assert [m.payload["to"] for m in emails] == [customer.email, staff.email] and all(
            m.attempts == 0 for m in emails
        )
        # created_at is the transaction's clock, as a server default would have it.
        assert response.json()["created_at"] == response.json()["updated_at"]
        assert appointment.created_at == emails[0].created_at

    async def test_a_clash_at_the_constraint_writes_nothing_and_is_the_keys_answer(
        self, client, session, staff, service, customer
    ):
        """A rival booking the availability check cannot see yet (uncommitted) wins at the exclusion
        constraint: the insert waits for it, then inserts no row of any kind, and 409 is the key's answer."""
        starts_at = utc(days_ahead(4), 2)
        headers = await headers_for(customer) | {"Idempotency-Key": uuid.uuid4().hex}
        rival = await asyncpg.connect(_plain_url())
        try:
            transaction = rival.transaction()
            await transaction.start()
            await rival.execute(
                "INSERT INTO appointments (id, client_id, staff_id, service_id, starts_at, ends_at, blocked_from,"
                " blocked_until, status, sequence) VALUES ($1, $2, $3, $4, $5, $6, $5, $6, 'confirmed', 0)",
                uuid.uuid4(),
                customer.id,
                staff.id,
                service.id,
                starts_at + timedelta(minutes=40),  # inside this booking's buffer after
                starts_at + timedelta(minutes=70),
            )
            booking = asyncio.create_task(
                client.post(URL, json=booking_body(service, staff, starts_at), headers=headers)
            )
            assert await _waits_on_a_lock(rival, booking)
            await transaction.commit()
        finally:
            await rival.close()
        first = await booking
        assert_problem(first, 409, "slot_unavailable")
        again = await client.post(URL, json=booking_body(service, staff, starts_at), headers=headers)
        assert again.status_code == 409 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
        assert len((await session.scalars(select(Appointment))).all()) == 1  # the rival's
        assert not (await session.scalars(select(OutboxMessage))).all()
        assert not (await session.scalars(select(Reminder))).all()


def _plain_url() -> str:
    return get_settings().database_url.replace("postgresql+asyncpg://", "postgresql://")


async def _waits_on_a_lock(observer: asyncpg.Connection, request: asyncio.Task) -> bool:
    """Whether another session of this database comes to wait on a lock while `request` runs."""
    for _ in range(250):
        if await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND pid <> pg_backend_pid()"
        ):
            return not request.done()
        await asyncio.sleep(0.02)
    return False


class TestHandOver:
    async def test_rows_are_queued_once_as_arq_would(self, app):
        ids = [101, 102]
        for _ in range(2):  # a second hand-over of the same rows queues nothing more
            async with get_redis().pipeline(transaction=False) as pipe:
                outbox.enqueue_on(pipe, ids)
                (queued,) = await pipe.execute()
        assert queued == 0
        pool = await outbox.get_arq_pool()
        assert await pool.zcard("arq:queue") == 2
        for outbox_id in ids:
            job = Job(outbox.job_id(outbox_id), pool)
            info = await job.info()
            assert await job.status() == JobStatus.queued
            assert info is not None and info.function == outbox.DELIVER_JOB and info.args == (outbox_id,)

    async def test_a_finished_job_is_not_queued_again(self, app):
        pool = await outbox.get_arq_pool()
        await pool.set("arq:result:" + outbox.job_id(7), b"done")
        async with get_redis().pipeline(transaction=False) as pipe:
            outbox.enqueue_on(pipe, [7])
            (queued,) = await pipe.execute()
        assert queued == 0 and await pool.zcard("arq:queue") == 0

    async def test_one_pipeline_when_every_role_shares_the_apps_redis(self, app, monkeypatch):
        sent: list[int] = []
        pipeline = type(get_redis().pipeline())
        original = pipeline.execute

        async def execute(self, *args, **kwargs):
            sent.append(len(self.command_stack))
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(pipeline, "execute", execute)
        await single.hand_over([1, 2], [(uuid.uuid4(), "{}")], {uuid.uuid4(): {date(2030, 1, 1)}})
        assert sent == [4]  # EVAL (both jobs), PUBLISH, HINCRBY, EXPIRE
        assert await (await outbox.get_arq_pool()).zcard("arq:queue") == 2

    async def test_a_queue_on_another_redis_gets_its_own_pipeline(self, app, monkeypatch):
        """`ARQ_REDIS_URL` naming another server (here: the same one, spelt differently): the jobs
        go through arq's own client, the events and the bump through the app's, side by side."""
        settings = get_settings()
        other = settings.redis_url.replace("127.0.0.1", "localhost")
        assert other != settings.redis_url
        monkeypatch.setattr(settings, "arq_redis_url", other)
        await outbox.close_arq_pool()
        try:
            await single.hand_over([5], [(uuid.uuid4(), "{}")], {uuid.uuid4(): None})
            assert await (await outbox.get_arq_pool()).zcard("arq:queue") == 1
        finally:
            await outbox.close_arq_pool()


class TestThePrePing:
    async def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout(self, app):
        """One empty statement per checkout (`database._ping`): a connection terminated while it sat
        in the pool is found dead there and replaced, so the next unit of work never sees it."""
        engine = get_engine()
        await engine.dispose()  # an empty pool: the next checkout can only be the victim
        async with engine.connect() as connection:
            victim = await connection.scalar(text("SELECT pg_backend_pid()"))
        admin = await asyncpg.connect(_plain_url())
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim)
            for _ in range(100):  # until the server has let it go
                if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", victim):
                    break
                await asyncio.sleep(0.02)
        finally:
            await admin.close()
        async with unit_of_work() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) != victim

    async def test_a_live_connection_passes_and_a_closed_one_does_not(self, app):
        async with get_engine().connect() as connection:
            raw = await connection.get_raw_connection()
            assert await greenlet_spawn(_ping, raw.dbapi_connection) is True
            await raw.driver_connection.close()
            assert await greenlet_spawn(_ping, raw.dbapi_connection) is False
            await connection.invalidate()


class TestTheDriverConnection:
    async def test_a_raw_statement_first_runs_inside_the_sessions_transaction(self, app, session, customer):
        """SQLAlchemy's adapter sends BEGIN with the first statement it runs itself; a raw statement
        first must not run outside the transaction (autocommit): it is rolled back with the session."""
        user_id, name = customer.id, customer.full_name
        async with get_sessionmaker()() as work:
            connection = await driver_connection(work)
            await connection.execute("UPDATE users SET full_name = 'Renamed' WHERE id = $1", user_id)
            assert await driver_connection(work) is connection
            others_see = await session.scalar(select(User.full_name).where(User.id == user_id))
            await work.rollback()
        assert others_see == name
        assert await session.scalar(select(User.full_name).where(User.id == user_id)) == name
