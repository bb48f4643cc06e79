"""`/metrics`: the business series move once per event, the backlog is measured at scrape time within
its bound, and the endpoint is protected (`METRICS_TOKEN`; closed in production without one)."""

from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import insert

from app.config import get_settings
from app.models import OutboxMessage, Reminder
from app.utils.time import utcnow
from tests.assertions import assert_problem
from tests.factories import PASSWORD, create_user, start_session, unique_email
from tests.metrics import delta, parse, value
from tests.scheduling import URL, add_appointment, booking_body, create_service, create_staff, days_ahead, headers_for
from tests.scheduling import local as local_time

TOKEN = "a-metrics-token-of-some-length"
TRANSITIONS = "c3po_appointment_transitions_total"
REFUSALS = "c3po_booking_refusals_total"


async def scrape(client, **headers: str) -> dict:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return parse(response.text)


@pytest.fixture
async def staff(session):
    return await create_staff(session)


@pytest.fixture
async def service(session, staff):
    return await create_service(session, [staff])


@pytest.fixture
async def customer(session):
    return await create_user(session)


START = local_time(days_ahead(7), 10)


class TestScrape:
    async def test_the_exposition_parses_and_carries_the_business_series(self, client):
        samples = await scrape(client)

        assert value(samples, "c3po_backlog_up") == 1
        names = {name for name, _ in samples}
        assert {"c3po_outbox_backlog", "c3po_outbox_oldest_age_seconds", "c3po_reminder_lag_seconds"} <= names
        assert "c3po_emails_sent_total" not in names  # the worker's series are served by the worker

    async def test_gzipped_when_the_scraper_accepts_it(self, client):
        response = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})

        assert response.headers["content-encoding"] == "gzip"
        assert b"c3po_backlog_up" in response.content  # httpx has decoded it

    async def test_openmetrics_when_asked_for(self, client):
        response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")


class TestProtection:
    async def test_open_outside_production_without_a_token(self, client):
        assert (await client.get("/metrics")).status_code == 200

    async def test_a_token_is_required_once_set(self, client, monkeypatch):
        monkeypatch.setattr(get_settings(), "metrics_token", TOKEN)

        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
        other_scheme = await client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        right = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

        for refused in (missing, wrong, other_scheme):
            assert_problem(refused, 401, "not_authenticated")
            assert refused.headers["www-authenticate"] == "Bearer"
        assert right.status_code == 200 and "c3po_backlog_up" in right.text

    async def test_closed_in_production_without_a_token(self, client, monkeypatch):
        monkeypatch.setattr(get_settings(), "environment", "production")

        assert_problem(await client.get("/metrics"), 404, "not_found")

        monkeypatch.setattr(get_settings(), "metrics_token", TOKEN)
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200

    def test_a_short_token_is_refused_at_start(self):
        from pydantic import ValidationError

        from app.config import Settings

        with pytest.raises(ValidationError, match="METRICS_TOKEN"):
            Settings(metrics_token="short")
        assert Settings(metrics_token="  ").metrics_token is None  # empty means unset (compose's ${VAR:-})


class TestBacklog:
    async def test_pending_emails_and_due_reminders_with_their_ages(self, client, session, staff, service, customer):
        now = utcnow()
        email = {"to": "x@example.org", "template": "verify_email", "locale": "en", "context": {}}
        rows = [
            {"created_at": now - timedelta(minutes=10)},  # pending, the oldest
            {"created_at": now - timedelta(minutes=1)},  # pending
            {"created_at": now - timedelta(hours=5), "sent_at": now},  # sent: not owed
            {"created_at": now - timedelta(hours=6), "failed_at": now},  # given up: not owed
        ]
        await session.execute(insert(OutboxMessage), [{"kind": "email", "payload": email, **row} for row in rows])
        # A webhook retrying for hours against a receiver that is down is not an email backlog.
        retrying = {"kind": "webhook", "payload": {}, "created_at": now - timedelta(hours=3), "attempts": 4}
        await session.execute(insert(OutboxMessage), [retrying])
        appointment = await add_appointment(session, customer, staff, service, START)
        await session.execute(
            insert(Reminder),
            [
                {"appointment_id": appointment.id, "offset_minutes": 1440, "due_at": now - timedelta(minutes=5)},
                {"appointment_id": appointment.id, "offset_minutes": 60, "due_at": now + timedelta(hours=1)},
                {
                    "appointment_id": appointment.id,
                    "offset_minutes": 30,
                    "due_at": now - timedelta(hours=2),
                    "sent_at": now,
                },
            ],
        )
        await session.commit()

        samples = await scrape(client)

        assert value(samples, "c3po_outbox_backlog") == 2
        assert 600 <= value(samples, "c3po_outbox_oldest_age_seconds") < 700
        assert value(samples, "c3po_reminders_due") == 1
        assert 300 <= value(samples, "c3po_reminder_lag_seconds") < 400

    async def test_nothing_owed_reads_zero(self, client):
        samples = await scrape(client)

        for name in ("c3po_outbox_backlog", "c3po_outbox_oldest_age_seconds", "c3po_reminders_due"):
            assert value(samples, name) == 0

    async def test_a_database_that_does_not_answer_in_time_leaves_only_the_backlog_out(self, client, service_urls):
        holder = await asyncpg.connect(service_urls["database_url"])
        try:
            async with holder.transaction():
                await holder.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
                response = await client.get("/metrics")  # its query waits for the lock until its timeout
        finally:
            await holder.close()

        assert response.status_code == 200
        samples = parse(response.text)
        assert value(samples, "c3po_backlog_up") == 0
        assert ("c3po_outbox_backlog", frozenset()) not in samples
        assert ("c3po_requests_shed_total", frozenset()) in samples  # everything else is there


class TestBusinessCounters:
    async def test_a_booking_and_its_cancellation_count_once_each(self, client, service, staff, customer):
        headers = await headers_for(customer)
        before = await scrape(client)

        booked = await client.post(URL, json=booking_body(service, staff, START), headers=headers)
        assert booked.status_code == 201, booked.text
        middle = await scrape(client)
        cancelled = await client.post(f"{URL}/{booked.json()['id']}/cancel", json={}, headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        after = await scrape(client)

        assert delta(before, middle, TRANSITIONS, **{"from": "new", "to": "confirmed"}) == 1
        assert delta(middle, after, TRANSITIONS, **{"from": "confirmed", "to": "cancelled"}) == 1
        assert delta(before, after, TRANSITIONS, **{"from": "new", "to": "confirmed"}) == 1

    async def test_confirmation_counts_pending_to_confirmed(self, client, session, staff, customer):
        gated = await create_service(session, [staff], name="Gated", requires_confirmation=True)
        before = await scrape(client)

        booked = await client.post(URL, json=booking_body(gated, staff, START), headers=await headers_for(customer))
        confirmed = await client.post(f"{URL}/{booked.json()['id']}/confirm", headers=await headers_for(staff))

        assert confirmed.status_code == 200, confirmed.text
        after = await scrape(client)
        assert delta(before, after, TRANSITIONS, **{"from": "new", "to": "pending"}) == 1
        assert delta(before, after, TRANSITIONS, **{"from": "pending", "to": "confirmed"}) == 1

    async def test_a_series_counts_each_occurrence(self, client, service, staff, customer):
        before = await scrape(client)

        body = booking_body(service, staff, START, recurrence={"rrule": "FREQ=WEEKLY;COUNT=3"})
        assert (await client.post(URL, json=body, headers=await headers_for(customer))).status_code == 201

        assert delta(before, await scrape(client), TRANSITIONS, **{"from": "new", "to": "confirmed"}) == 3

    async def test_a_refusal_counts_its_code_and_no_transition(self, client, session, service, staff, customer):
        await add_appointment(session, customer, staff, service, START)
        other = await headers_for(await create_user(session))
        before = await scrape(client)

        taken = await client.post(URL, json=booking_body(service, staff, START), headers=other)
        assert taken.status_code in (409, 422), taken.text
        code = taken.json()["code"]

        after = await scrape(client)
        assert delta(before, after, REFUSALS, code=code) == 1
        assert delta(before, after, TRANSITIONS, **{"from": "new", "to": "confirmed"}) == 0

    async def test_a_replayed_refusal_is_not_counted_again(self, client, session, service, staff):
        unverified = await headers_for(await create_user(session, verified=False))
        headers = {**unverified, "Idempotency-Key": "refused-once"}
        before = await scrape(client)

        first = await client.post(URL, json=booking_body(service, staff, START), headers=headers)
        replay = await client.post(URL, json=booking_body(service, staff, START), headers=headers)

        assert_problem(first, 403, "email_not_verified")
        assert replay.headers.get("idempotent-replayed") == "true"
        assert delta(before, await scrape(client), REFUSALS, code="email_not_verified") == 1

    async def test_a_rate_limit_refusal_counts_under_its_limit(self, client):
        before = await scrape(client)

        answers = [await client.post("/api/v1/auth/password-reset", json={"email": unique_email()}) for _ in range(11)]

        assert [answer.status_code for answer in answers].count(429) == 1
        after = await scrape(client)
        assert delta(before, after, "c3po_rate_limit_refusals_total", limit="reset:ip") == 1
        assert not any("@" in str(labels) for _, labels in after)  # no address in any label

    async def test_a_signed_in_limit_is_labelled_by_user_not_ip(self, client, session, set_env):
        set_env(SENSITIVE_REQUESTS_PER_IP="2/minute", SENSITIVE_REQUESTS_PER_EMAIL="100/minute")
        pair = await start_session(await create_user(session))
        before = await scrape(client)

        answers = [
            await client.post(
                "/api/v1/users/me/email", json={"new_email": unique_email(), "password": PASSWORD}, headers=pair.headers
            )
            for _ in range(3)
        ]

        assert [answer.status_code for answer in answers] == [202, 202, 429]
        after = await scrape(client)
        assert delta(before, after, "c3po_rate_limit_refusals_total", limit="email-change:user") == 1
        assert delta(before, after, "c3po_rate_limit_refusals_total", limit="email-change:ip") == 0
