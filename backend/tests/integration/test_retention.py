"""Retention: each purge deletes past-retention rows a bounded batch per transaction, skips rows another
worker holds, and leaves everything still within its retention; each batch is an index scan."""

import asyncio
import json
import uuid

import pytest
from sqlalchemy import func, select, text

from app.database import get_engine
from app.models import OutboxMessage, Role, User
from app.services import retention
from app.services.retention import PURGES
from tests.factories import create_user
from tests.integration.test_indexes import indexes, plan_nodes, sent_statements

BATCH = 10
PAST, KEPT = 25, 4  # 25 past retention: two full batches and a short one

# name -> (the model's table, rows past retention, rows kept): each a SELECT of the values to insert,
# `n` running over generate_series. `:user` is an account, `:appointment` a seeded appointment's id.
ROWS = {
    "sent emails": (
        "outbox (kind, payload, attempts, created_at, sent_at)",
        "'email', '{}', 0, now() - interval '40 days', now() - interval '31 days' - n * interval '1 s'",
        "'email', '{}', 0, now() - interval '40 days', now() - interval '29 days'",
    ),
    "failed emails": (
        "outbox (kind, payload, attempts, created_at, failed_at)",
        "'email', '{}', 0, now() - interval '99 days', now() - interval '91 days' - n * interval '1 s'",
        "'email', '{}', 0, now() - interval '99 days', now() - interval '89 days'",
    ),
    "used action tokens": (
        "action_tokens (token_hash, user_id, purpose, expires_at, used_at)",
        "md5('u' || n || random()), :user, 'verify_email', now() + interval '1 day', now() - interval '8 days'",
        "md5('k' || n || random()), :user, 'verify_email', now() + interval '1 day', now() - interval '6 days'",
    ),
    "expired action tokens": (
        "action_tokens (token_hash, user_id, purpose, expires_at)",
        "md5('e' || n || random()), :user, 'password_reset', now() - interval '8 days' - n * interval '1 s'",
        "md5('k' || n || random()), :user, 'password_reset', now() - interval '6 days'",
    ),
    "sent reminders": (
        "reminders (appointment_id, offset_minutes, due_at, sent_at)",
        ":appointment, 60, now() - interval '31 days', now() - interval '31 days' - n * interval '1 s'",
        # Sent long enough ago, but its appointment is still ahead (a 40-day reminder): kept.
        ":appointment, 57600, now() - interval '31 days', now() - interval '31 days'",
    ),
    "expired idempotency keys": (
        "idempotency_keys (user_id, key, fingerprint, status, created_at)",
        ":user, 'old-' || n, 'f', 'done', now() - interval '25 hours' - n * interval '1 s'",
        ":user, 'new-' || n, 'f', 'done', now() - interval '23 hours'",
    ),
    "audit entries": (
        "audit_log (action, entity_type, entity_id, created_at)",
        "'user.update', 'user', n::text, now() - interval '366 days' - n * interval '1 s'",
        "'user.update', 'user', n::text, now() - interval '364 days'",
    ),
}
TABLES = {name: insert.split(" ")[0] for name, (insert, _, _) in ROWS.items()}


async def seed(session, name: str, past: int, kept: int) -> None:
    """`past` rows of `name` past their retention and `kept` within it, on an account (and appointments)."""
    user = await create_user(session)
    table, old, new = ROWS[name]
    for values, count in ((old, past), (new, kept)):
        if count == 0:
            continue
        params = {"user": user.id, "count": count}
        source = "generate_series(1, :count) AS n"
        if ":appointment" in values:  # one finished appointment per reminder, numbered like the series
            marker = f"seed-{uuid.uuid4().hex}"
            await session.execute(
                text(APPOINTMENTS), {**params, "service": await service_id(session), "marker": marker}
            )
            values = values.replace(":appointment", "a.id")
            source = "(SELECT id, row_number() OVER () AS n FROM appointments WHERE notes = :marker) AS a"
            params["marker"] = marker
        await session.execute(text(f"INSERT INTO {table} SELECT {values} FROM {source}"), params)
    await session.commit()


APPOINTMENTS = """INSERT INTO appointments (id, client_id, staff_id, service_id, starts_at, ends_at, blocked_from,
    blocked_until, status, sequence, notes)
    SELECT gen_random_uuid(), :user, :user, :service, at, at + interval '1 hour', at, at + interval '1 hour',
           'completed', 0, :marker
    FROM generate_series(1, :count) AS n
    CROSS JOIN LATERAL (SELECT now() - interval '30 days' - n * interval '2 hours' AS at) AS t"""


async def service_id(session):
    found = await session.scalar(text("SELECT id FROM services LIMIT 1"))
    if found is None:
        found = await session.scalar(
            text(
                """INSERT INTO services (id, name, description, duration_minutes, buffer_before_minutes,
                buffer_after_minutes, price, currency, requires_confirmation, min_notice_minutes, max_advance_days,
                is_active) VALUES (gen_random_uuid(), 'Seeded', '', 60, 0, 0, 0, 'EUR', false, 0, 90, true)
                RETURNING id"""
            )
        )
    return found


async def count(session, name: str) -> tuple[int, int]:
    """(rows past retention, all rows) of the purge's table now (reading, not locking)."""
    purge = by_name(name)
    past = await session.scalar(select(func.count()).select_from(purge.model).where(purge.past()))
    total = await session.scalar(text(f"SELECT count(*) FROM {TABLES[name]}"))
    await session.commit()
    return past, total


def by_name(name: str):
    return next(p for p in PURGES if p.name == name)


@pytest.mark.parametrize("name", list(ROWS))
class TestBatches:
    async def test_each_pass_deletes_at_most_one_batch_and_the_job_finishes_the_rest(self, app, session, name):
        await seed(session, name, PAST, KEPT)
        assert await count(session, name) == (PAST, PAST + KEPT)

        assert await retention.purge_batch(by_name(name), BATCH) == BATCH
        assert await count(session, name) == (PAST - BATCH, PAST - BATCH + KEPT)
        assert await retention.purge_batch(by_name(name), BATCH) == BATCH
        assert await count(session, name) == (PAST - 2 * BATCH, PAST - 2 * BATCH + KEPT)

        counts = await retention.purge_all(batch=BATCH)

        assert counts[name] == PAST - 2 * BATCH
        assert sum(counts.values()) == counts[name]  # nothing else was past its retention
        assert await count(session, name) == (0, KEPT)

    async def test_rows_another_worker_holds_are_skipped_not_waited_for(self, app, session, name):
        await seed(session, name, PAST, KEPT)
        purge = by_name(name)
        async with get_engine().connect() as other:  # another worker, in the middle of its batch
            held = await other.execute(purge.chosen(5))
            assert len(held.all()) == 5

            assert await retention.purge(name, BATCH) == PAST - 5  # no lock wait (it would time out)

            assert await count(session, name) == (5, 5 + KEPT)
            await other.rollback()
        assert await retention.purge(name, BATCH) == 5

    async def test_two_workers_at_once_delete_each_row_once(self, app, session, name):
        await seed(session, name, 4 * BATCH + 5, KEPT)

        first, second = await asyncio.gather(retention.purge_all(batch=BATCH), retention.purge_all(batch=BATCH))

        assert first[name] + second[name] == 4 * BATCH + 5
        assert await count(session, name) == (0, KEPT)


class TestRetentionSettings:
    async def test_zero_keeps_rows_for_ever(self, app, session, monkeypatch):
        await seed(session, "audit entries", 3, 0)
        monkeypatch.setenv("RETENTION_AUDIT_DAYS", "0")
        from app.config import get_settings

        get_settings.cache_clear()
        try:
            assert (await retention.purge_all())["audit entries"] == 0
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
        assert (await retention.purge_all())["audit entries"] == 3


async def unverified(session, *, days: int, **kwargs) -> User:
    user = await create_user(session, verified=False, **kwargs)
    await session.execute(
        text("UPDATE users SET created_at = now() - make_interval(days => :days) WHERE id = :id"),
        {"days": days, "id": user.id},
    )
    await session.commit()
    return user


class TestUnverifiedAccounts:
    async def test_erased_a_batch_at_a_time_through_the_erasure_service(self, app, session):
        verified = await create_user(session)
        await session.execute(text("UPDATE users SET created_at = now() - interval '90 days'"))
        old = [await unverified(session, days=31) for _ in range(5)]
        recent = await unverified(session, days=29)
        staff = await unverified(session, days=31, role=Role.staff)  # created by an admin: theirs to decide
        # The verification email they never followed: its address must not outlive the account.
        session.add(
            OutboxMessage(kind="email", payload={"to": old[0].email, "template": "verify_email", "locale": "en"})
        )
        await session.commit()

        assert len(await retention.erase_unverified_batch(2)) == 2
        assert len(await retention.erase_unverified_batch(2)) == 2
        assert (await retention.purge_all(account_batch=2))["unverified accounts"] == 1

        rows = {u.id: u for u in await session.scalars(select(User).execution_options(populate_existing=True))}
        for user in old:
            erased = rows[user.id]
            assert erased.deleted_at is not None and erased.email.endswith("@deleted.invalid"), erased.email
        for kept in (recent, staff, verified):
            assert rows[kept.id].deleted_at is None and rows[kept.id].email == kept.email
        emails = [m.payload for m in await session.scalars(select(OutboxMessage))]
        assert emails and not any(old[0].email in json.dumps(payload) for payload in emails)
        assert (await retention.purge_all(account_batch=2))["unverified accounts"] == 0


async def batch_statements(call) -> list[tuple[str, object]]:
    """The batch statements (`SKIP LOCKED`) a purge sends."""
    return [(s, p) for s, p in await sent_statements(call) if "SKIP LOCKED" in s]


EXPECTED_INDEX = {
    "sent emails": "ix_outbox_sent_at",
    "failed emails": "ix_outbox_failed_at",
    "used action tokens": "ix_action_tokens_used_at",
    "expired action tokens": "ix_action_tokens_expires_at",
    "sent reminders": "ix_reminders_sent_at",
    "expired idempotency keys": "ix_idempotency_keys_created_at",
    "audit entries": "ix_audit_log_created_at",
    "unverified accounts": "ix_users_unverified",
}


class TestIndexes:
    """On tables where most rows are still kept (as in production), each batch's choice is an index scan
    on the column its age is counted from, as planned for the very statement the purge sends."""

    async def test_every_batch_is_an_index_scan(self, app, session):
        for name in ROWS:
            await seed(session, name, 50, 3000)
        for days in (31, 1):  # 20 unverified accounts of each age among 3,000 verified
            await session.execute(
                text(
                    f"""INSERT INTO users (id, email, hashed_password, full_name, timezone, locale, role, is_active,
                    created_at, email_verified_at) SELECT gen_random_uuid(), 'seed-{days}-' || n || '@example.org', 'x',
                    'Seed', 'UTC', 'en', 'user', true, now() - interval '{days} days', CASE WHEN n > 20 THEN now() END
                    FROM generate_series(1, 3000) AS n"""
                )
            )
        await session.commit()
        await session.execute(text("ANALYZE"))
        await session.commit()

        plans = {}
        for name in ROWS:
            plans[name] = await batch_statements(lambda name=name: retention.purge_batch(by_name(name), BATCH))
        plans["unverified accounts"] = await batch_statements(lambda: retention.erase_unverified_batch(1))

        connection = await session.connection()
        for name, statements in plans.items():
            assert len(statements) == 1, (name, statements)
            statement, parameters = statements[0]
            raw = (await connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters)).scalar_one()
            nodes = plan_nodes((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
            assert EXPECTED_INDEX[name] in indexes(nodes), (name, nodes)
            scans = [(node["Node Type"], node.get("Index Name")) for node in nodes if "Scan" in node["Node Type"]]
            assert not any(kind == "Seq Scan" for kind, _ in scans), (name, scans)
        await session.rollback()
