"""Outbox claims: a row is claimed in a short transaction, sent with none open, and marked sent in
another; a claim whose worker died runs out and the row is delivered by another, once."""

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import func, update
from sqlalchemy.exc import DBAPIError

from app.database import dispose_engine
from app.models import OutboxMessage
from app.services.messaging.outbox import get_arq_pool
from app.services.messaging.worker import attempt_delivery, deliver_outbox, relay_once
from tests.integration.test_email import load, queue, smtp  # noqa: F401 (the fixture)
from tests.smtp import settings_env

LONG_OPEN = timedelta(seconds=0.5)  # a claim or a mark takes milliseconds; a stalled send, seconds


async def held(smtp, count: int = 1) -> None:  # noqa: F811
    for _ in range(400):
        if smtp.mailbox.held >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the SMTP server never got the message")


async def expire_claims(session, *, claimed_by: str = "dead-host:4242:0badf00d") -> None:
    """What a worker SIGKILLed in mid-send leaves: a claim that has run out, on an overdue row."""
    past = func.now() - timedelta(minutes=5)
    await session.execute(update(OutboxMessage).values(claimed_by=claimed_by, claimed_until=past, next_attempt_at=past))
    await session.commit()


class TestNoTransactionDuringTheSend:
    async def test_the_claim_is_committed_and_no_transaction_stays_open_while_smtp_stalls(
        self,
        service_urls,
        smtp,  # noqa: F811
    ):
        [outbox_id] = await queue()
        smtp.hold()
        sending = asyncio.create_task(attempt_delivery(outbox_id))
        await held(smtp)

        conn = await asyncpg.connect(service_urls["database_url"])
        try:
            open_ones = await conn.fetch(
                "SELECT application_name, state, clock_timestamp() - xact_start AS open_for FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )
            await asyncio.sleep(LONG_OPEN.total_seconds())
            still_open = await conn.fetch(
                "SELECT application_name, state FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND clock_timestamp() - xact_start > $1",
                LONG_OPEN,
            )
            claim = await conn.fetchrow(
                "SELECT claimed_by, claimed_until > now() AS live, sent_at FROM outbox WHERE id = $1", outbox_id
            )
        finally:
            await conn.close()
        assert still_open == [], (open_ones, still_open)
        assert claim["live"] and claim["sent_at"] is None  # visible to others: committed before the send
        assert claim["claimed_by"].count(":") == 2  # host:pid:attempt

        smtp.release()
        attempt = await sending
        assert attempt is not None and attempt.sent
        assert len(smtp.messages) == 1

    async def test_a_send_is_cut_off_before_its_lease_runs_out_and_retried(self, session, smtp):  # noqa: F811
        [outbox_id] = await queue()
        smtp.hold()
        with settings_env(OUTBOX_LEASE_SECONDS="1"):
            attempt = await asyncio.wait_for(attempt_delivery(outbox_id), 5)
        assert attempt is not None and not attempt.sent and attempt.attempts == 1
        row = await load(session, outbox_id)
        assert (row.claimed_by, row.claimed_until, row.sent_at) == (None, None, None)
        assert row.last_error.startswith("TimeoutError")

        smtp.release()
        await session.execute(update(OutboxMessage).values(next_attempt_at=func.now()))
        await session.commit()
        assert (await attempt_delivery(outbox_id)).sent
        assert len(smtp.messages) == 1  # the one cut off never reached 250, so the server dropped it


class TestMarkingSent:
    async def test_a_mark_that_cannot_be_written_at_once_is_tried_again_not_left_to_a_resend(
        self,
        service_urls,
        session,
        smtp,  # noqa: F811
    ):
        [outbox_id] = await queue()
        await dispose_engine()
        conn = await asyncpg.connect(service_urls["database_url"])
        try:
            with settings_env(DB_LOCK_TIMEOUT_SECONDS="0.3"):
                smtp.hold()
                sending = asyncio.create_task(attempt_delivery(outbox_id))
                await held(smtp)
                lock = conn.transaction()
                await lock.start()
                await conn.execute("SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE", outbox_id)
                smtp.release()
                await asyncio.sleep(1.5)  # the mark times out on the lock, more than once
                assert not sending.done()
                await lock.rollback()
                attempt = await asyncio.wait_for(sending, 10)
        finally:
            await conn.close()
            await dispose_engine()

        assert attempt is not None and attempt.sent
        row = await load(session, outbox_id)
        assert row.sent_at is not None and row.claimed_by is None and row.attempts == 0
        assert len(smtp.messages) == 1

    async def test_a_send_whose_mark_never_landed_is_recorded_not_repeated_by_whoever_takes_over(
        self,
        service_urls,
        session,
        smtp,  # noqa: F811
    ):
        """Postgres away for longer than the claim (the fault drill's stop): the sender gives up
        recording its 250, the claim runs out, the row is taken over once Postgres is back. The
        note the sender left in Redis makes the taker record it sent instead of sending again."""
        [outbox_id] = await queue()
        await dispose_engine()
        conn = await asyncpg.connect(service_urls["database_url"])
        try:
            with settings_env(DB_LOCK_TIMEOUT_SECONDS="0.2", OUTBOX_LEASE_SECONDS="2"):
                smtp.hold()
                sending = asyncio.create_task(attempt_delivery(outbox_id))
                await held(smtp)
                lock = conn.transaction()
                await lock.start()  # every mark times out on this lock until the claim has run out
                await conn.execute("SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE", outbox_id)
                smtp.release()
                with pytest.raises(DBAPIError):
                    await asyncio.wait_for(sending, 10)
                await lock.rollback()
                await asyncio.sleep(2.1)  # the claim has run out: the row is anyone's
                taken = await attempt_delivery(outbox_id)  # as the job's retry or the relay would
                assert taken is not None and taken.sent
        finally:
            await conn.close()
            await dispose_engine()

        assert smtp.count_by_message_id() and set(smtp.count_by_message_id().values()) == {1}
        row = await load(session, outbox_id)
        assert row.sent_at is not None and row.claimed_by is None
        assert await attempt_delivery(outbox_id) is None


class TestClaims:
    async def test_a_live_claim_is_left_alone(self, session, smtp):  # noqa: F811
        [outbox_id] = await queue()
        future = func.now() + timedelta(minutes=5)
        past = func.now() - timedelta(minutes=5)
        await session.execute(
            update(OutboxMessage).values(claimed_by="busy:1:1", claimed_until=future, next_attempt_at=past)
        )
        await session.commit()

        assert await deliver_outbox({"redis": await get_arq_pool()}, outbox_id) == "nothing to do"
        assert await relay_once() == 0
        assert smtp.messages == []

    async def test_an_expired_claim_is_taken_over_and_delivered_once(self, session, smtp):  # noqa: F811
        ids = await queue(3)
        await expire_claims(session)

        assert await relay_once() == 3
        assert await relay_once() == 0

        counts = smtp.count_by_message_id()
        assert len(counts) == 3 and set(counts.values()) == {1}
        for outbox_id in ids:
            row = await load(session, outbox_id)
            assert row.sent_at is not None and row.claimed_by is None
            assert row.attempts == 1  # the attempt that never finished counts
            assert row.last_error == "claim of dead-host:4242:0badf00d ran out"

    async def test_a_claim_takes_one_row_whatever_plan_the_statistics_give(self, session, service_urls, smtp):  # noqa: F811
        """The due row is picked once. Joined to the UPDATE as a subquery, it was scanned again for
        each outbox row when the planner thought the table nearly empty (its statistics taken just
        after the rows were deleted): on a rescan `SKIP LOCKED` passes over the row just claimed
        and picks the next, so one claim took every due row."""
        await queue(1)
        conn = await asyncpg.connect(service_urls["database_url"])
        try:
            await conn.execute("DELETE FROM outbox")
            await conn.execute("ANALYZE outbox")  # statistics of an empty table that has had rows
        finally:
            await conn.close()
        await queue(3)
        await expire_claims(session)

        assert await relay_once() == 3

        counts = smtp.count_by_message_id()
        assert len(counts) == 3 and set(counts.values()) == {1}

    async def test_two_relays_racing_for_expired_claims_send_each_once(self, session, smtp):  # noqa: F811
        await queue(8)
        await expire_claims(session)

        sent = await asyncio.gather(relay_once(), relay_once(), relay_once())

        assert sum(sent) == 8
        counts = smtp.count_by_message_id()
        assert len(counts) == 8 and set(counts.values()) == {1}

    async def test_the_sent_mark_stands_when_the_claim_was_taken_over_meanwhile(self, session, smtp):  # noqa: F811
        [outbox_id] = await queue()
        smtp.hold()
        sending = asyncio.create_task(attempt_delivery(outbox_id))
        await held(smtp)
        await session.execute(update(OutboxMessage).values(claimed_by="other:2:2"))  # another worker's now
        await session.commit()

        smtp.release()
        assert (await sending).sent

        row = await load(session, outbox_id)
        assert row.sent_at is not None and row.claimed_by is None  # the message is out: no one retries it
        assert await relay_once() == 0

    async def test_a_failure_after_the_claim_was_taken_over_leaves_the_row_to_its_new_holder(
        self,
        session,
        smtp,  # noqa: F811
    ):
        [outbox_id] = await queue()
        smtp.hold()
        sending = asyncio.create_task(attempt_delivery(outbox_id))
        await held(smtp)
        await session.execute(update(OutboxMessage).values(claimed_by="other:2:2"))
        await session.commit()

        smtp.stop()  # the held send fails
        assert await sending is None

        row = await load(session, outbox_id)
        assert (row.claimed_by, row.attempts, row.sent_at) == ("other:2:2", 0, None)
