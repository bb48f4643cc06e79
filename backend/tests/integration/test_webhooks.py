"""Webhooks end to end in one process: events written by real requests, delivered by the worker's
own `attempt_delivery` to a real local HTTP receiver that verifies every signature with the
`standardwebhooks` library. Retry schedules are scaled down (WEBHOOK_RETRY_SCHEDULE)."""

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from app.database import get_sessionmaker, unit_of_work
from app.metrics import WORKER_REGISTRY
from app.models import WEBHOOK_EVENT_TYPES, OutboxMessage, Role, WebhookAttempt, WebhookEndpoint
from app.services.integrations import webhooks
from app.services.messaging.worker import attempt_delivery
from tests.factories import create_user
from tests.httpserver import Request, Server, serve
from tests.metrics import delta, parse
from tests.scheduling import add_appointment, booking_body, create_service, create_staff, days_ahead, headers_for, local

API = "/api/v1/webhooks"
SCALED = "0.2,0.4,0.8,1.6,3.2,3.2,3.2"  # the guidance's shape, seconds instead of minutes and hours


@dataclass(frozen=True)
class Seen:
    webhook_id: str
    timestamp: int
    body: dict
    request: Request


def verified(server: Server, secret: str) -> list[Seen]:
    """Every request the receiver got, each verified as a Standard Webhooks receiver would."""
    seen = []
    for request in server.requests:
        body = Webhook(secret).verify(request.body, request.headers)
        assert body == json.loads(request.body)
        seen.append(Seen(request.headers["webhook-id"], int(request.headers["webhook-timestamp"]), body, request))
    return seen


@pytest.fixture
def scaled(set_env):
    set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8", WEBHOOK_RETRY_SCHEDULE=SCALED)


@pytest.fixture
async def admin(session):
    user = await create_user(session, role=Role.admin)
    return user, await headers_for(user)


async def add_endpoint(client, headers, url: str, events=WEBHOOK_EVENT_TYPES, **extra) -> tuple[str, str]:
    response = await client.post(API, json={"url": url, "event_types": list(events), **extra}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["secret"]


async def webhook_rows() -> list[OutboxMessage]:
    async with get_sessionmaker()() as db:
        query = select(OutboxMessage).where(OutboxMessage.kind == "webhook").order_by(OutboxMessage.id)
        return list(await db.scalars(query))


async def drain(timeout: float = 20) -> None:
    """What the worker does for webhook rows: attempt each one when it is due, until none is pending."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [row for row in await webhook_rows() if row.sent_at is None and row.failed_at is None]
        if not pending:
            return
        assert time.monotonic() < deadline, f"still pending: {[(r.id, r.last_error) for r in pending]}"
        due = [row.id for row in pending if row.next_attempt_at <= datetime.now(UTC)]
        for outbox_id in due:
            await attempt_delivery(outbox_id)
        if not due:
            await asyncio.sleep(0.05)


@pytest.fixture
async def booking_world(session):
    staff = await create_staff(session)
    service = await create_service(session, [staff])
    confirming = await create_service(session, [staff], name="Needs confirming", requires_confirmation=True)
    client_user = await create_user(session)
    return staff, service, confirming, client_user


async def book(client, headers, service, staff, starts_at, **extra):
    response = await client.post(
        "/api/v1/appointments", json=booking_body(service, staff, starts_at, **extra), headers=headers
    )
    return response


class TestEveryEvent:
    async def test_each_event_is_delivered_once_signed_with_the_api_shape(
        self, client, session, scaled, admin, booking_world
    ):
        _, admin_headers = admin
        staff, service, confirming, customer = booking_world
        as_customer, as_staff = await headers_for(customer), await headers_for(staff)
        answers: dict[str, list[dict]] = {}
        with serve() as receiver:
            _, secret = await add_endpoint(client, admin_headers, f"{receiver.url}/hooks")
            day = days_ahead(3)

            created = await book(client, as_customer, service, staff, local(day, 9))
            assert created.status_code == 201
            answers["appointment.created"] = [created.json()]
            pending = (await book(client, as_customer, confirming, staff, local(day, 11))).json()
            confirmed = await client.post(f"/api/v1/appointments/{pending['id']}/confirm", headers=as_staff)
            answers["appointment.confirmed"] = [confirmed.json()]
            moved = await client.patch(
                f"/api/v1/appointments/{created.json()['id']}",
                json={"starts_at": local(day, 13).isoformat()},
                headers=as_customer,
            )
            assert moved.status_code == 200, moved.text
            answers["appointment.rescheduled"] = [moved.json()]
            cancelled = await client.post(f"/api/v1/appointments/{pending['id']}/cancel", json={}, headers=as_staff)
            assert cancelled.status_code == 200, cancelled.text
            answers["appointment.cancelled"] = [cancelled.json()]
            past = await add_appointment(session, customer, staff, service, datetime.now(UTC) - timedelta(hours=3))
            other = await add_appointment(session, customer, staff, service, datetime.now(UTC) - timedelta(hours=6))
            done = await client.post(f"/api/v1/appointments/{past.id}/complete", headers=as_staff)
            answers["appointment.completed"] = [done.json()]
            missed = await client.post(f"/api/v1/appointments/{other.id}/no-show", headers=as_staff)
            answers["appointment.no_show"] = [missed.json()]
            weekly = {"recurrence": {"rrule": "FREQ=WEEKLY;COUNT=2"}}
            series = await book(client, as_customer, service, staff, local(days_ahead(5), 15), **weekly)
            assert series.status_code == 201, series.text
            series_id = series.json()["series_id"]
            stopped = await client.post(f"/api/v1/appointment-series/{series_id}/cancel", json={}, headers=as_customer)
            assert stopped.status_code == 200, stopped.text
            answers["series.cancelled"] = [stopped.json()]
            leaver = await create_user(session)
            assert (await client.delete("/api/v1/users/me", headers=await headers_for(leaver))).status_code == 204

            rows = await webhook_rows()
            await drain()
            seen = verified(receiver, secret)

        assert len(seen) == len(rows)  # one delivery per event
        assert sorted(s.webhook_id for s in seen) == sorted(r.payload["webhook_id"] for r in rows)
        assert len({s.webhook_id for s in seen}) == len(seen)
        by_type: dict[str, list[dict]] = {}
        for s in seen:
            assert set(s.body) == {"type", "timestamp", "data"}
            assert s.request.headers["webhook-signature"].startswith("v1,")
            assert abs(s.timestamp - time.time()) < 60
            by_type.setdefault(s.body["type"], []).append(s.body["data"])
        assert set(by_type) == set(WEBHOOK_EVENT_TYPES)
        for event_type, expected in answers.items():
            assert expected[0] in by_type[event_type], event_type
        assert answers["appointment.created"][0]["id"] in {d["id"] for d in by_type["appointment.created"]}
        assert {d["series_id"] for d in by_type["series.created"]} == {series_id}
        assert by_type["user.erased"] == [{"id": str(leaver.id)}]
        assert all(r.sent_at is not None for r in await webhook_rows())

    async def test_a_booking_with_no_endpoint_writes_no_webhook_row(self, client, scaled, booking_world):
        staff, service, _, customer = booking_world
        response = await book(client, await headers_for(customer), service, staff, local(days_ahead(3), 9))
        assert response.status_code == 201
        assert await webhook_rows() == []


class TestFilters:
    async def test_each_endpoint_gets_only_its_event_types_and_an_inactive_one_nothing(
        self, client, scaled, admin, booking_world
    ):
        _, headers = admin
        staff, service, _, customer = booking_world
        as_customer = await headers_for(customer)
        with serve() as created_only, serve() as cancelled_only, serve() as off:
            _, created_secret = await add_endpoint(client, headers, created_only.url, ["appointment.created"])
            _, cancelled_secret = await add_endpoint(client, headers, cancelled_only.url, ["appointment.cancelled"])
            await add_endpoint(client, headers, off.url, is_active=False)
            booked = (await book(client, as_customer, service, staff, local(days_ahead(3), 9))).json()
            await client.post(f"/api/v1/appointments/{booked['id']}/cancel", json={}, headers=as_customer)
            await drain()
            assert [s.body["type"] for s in verified(created_only, created_secret)] == ["appointment.created"]
            assert [s.body["type"] for s in verified(cancelled_only, cancelled_secret)] == ["appointment.cancelled"]
            assert off.requests == []


class TestNothingForARolledBackChange:
    async def test_a_booking_refused_with_409_sends_nothing(self, client, scaled, admin, booking_world):
        _, headers = admin
        staff, service, _, customer = booking_world
        with serve() as receiver:
            _, secret = await add_endpoint(client, headers, receiver.url)
            first = await book(client, await headers_for(customer), service, staff, local(days_ahead(3), 9))
            second = await book(client, headers, service, staff, local(days_ahead(3), 9), client_id=str(customer.id))
            assert (first.status_code, second.status_code) == (201, 409)
            await drain()
            assert [s.body["data"]["id"] for s in verified(receiver, secret)] == [first.json()["id"]]
        assert len(await webhook_rows()) == 1

    async def test_a_transaction_that_fails_after_writing_the_event_leaves_no_row(self, client, scaled, admin):
        _, headers = admin
        with serve() as receiver:
            await add_endpoint(client, headers, receiver.url)
            with pytest.raises(RuntimeError):
                async with unit_of_work() as db:
                    ids = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "x"})])
                    assert len(ids) == 1  # written in the transaction ...
                    raise RuntimeError("the change fails after the write")
            await drain()
            assert receiver.requests == []
        assert await webhook_rows() == []  # ... and gone with it


def flaky(down_seconds: float):
    """A receiver that is down for `down_seconds`: 503 for the first half, connections dropped for
    the second, then 200."""
    started = time.monotonic()

    def respond(_: Request):
        elapsed = time.monotonic() - started
        if elapsed < down_seconds / 2:
            return 503, {}, b"down for maintenance"
        if elapsed < down_seconds:
            return None
        return 200, {}, b"ok"

    return respond


class TestRetries:
    async def test_a_receiver_down_then_up_gets_every_event_with_the_same_webhook_id(self, client, scaled, admin):
        """The issue's 30 s outage, scaled like the schedule (3 s against retries 0.2 s ... 3.2 s)."""
        _, headers = admin
        with serve(flaky(3)) as receiver:
            _, secret = await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                events = [webhooks.Event({"id": str(i)}) for i in range(3)]
                await webhooks.emit(db, "user.erased", events)
            await drain(timeout=30)
            seen = verified(receiver, secret)
        rows = await webhook_rows()
        assert all(row.sent_at is not None for row in rows)
        for row in rows:
            mine = [s for s in seen if s.webhook_id == row.payload["webhook_id"]]
            assert len(mine) >= 2  # failed while down (once at least, more on a fast machine), then delivered
            assert [s.timestamp for s in mine] == sorted(s.timestamp for s in mine)
            assert mine[-1].timestamp > mine[0].timestamp  # each attempt signed at its own time
        assert {s.body["data"]["id"] for s in seen} == {"0", "1", "2"}

    async def test_410_disables_the_endpoint_and_nothing_more_is_tried(self, client, scaled, admin):
        _, headers = admin
        before = parse(generate_latest(WORKER_REGISTRY).decode())
        with serve(lambda _: (410, {}, b"gone")) as receiver:
            endpoint_id, _ = await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            await drain()
            assert len(receiver.requests) == 1
            async with unit_of_work() as db:  # the endpoint is off: a later event is not even written
                assert await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "2"})]) == []
        (row,) = await webhook_rows()
        assert row.failed_at is not None and row.sent_at is None
        shown = (await client.get(f"{API}/{endpoint_id}", headers=headers)).json()
        assert shown["is_active"] is False and "410" in shown["disabled_reason"]
        after = parse(generate_latest(WORKER_REGISTRY).decode())
        assert delta(before, after, "c3po_webhook_deliveries_total", outcome="disabled") == 1
        assert delta(before, after, "c3po_webhook_deliveries_total", outcome="given_up") == 0

    async def test_a_private_address_is_refused_and_nothing_reaches_it(self, client, set_env, admin):
        set_env(EGRESS_ALLOWED_NETWORKS="", WEBHOOK_RETRY_SCHEDULE=SCALED)
        _, headers = admin
        before = parse(generate_latest(WORKER_REGISTRY).decode())
        with serve() as internal:
            # A name, checked where it points at delivery (an IP literal is refused at input already).
            endpoint_id, _ = await add_endpoint(client, headers, f"http://localhost:{internal.port}/hooks")
            async with unit_of_work() as db:
                await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            await drain()
            assert internal.requests == []
        (row,) = await webhook_rows()
        assert row.failed_at is not None and "refused" in row.last_error
        (listed,) = (await client.get(f"{API}/{endpoint_id}/deliveries", headers=headers)).json()["items"]
        assert listed["status"] == "failed" and "not a public address" in listed["last_error"]
        after = parse(generate_latest(WORKER_REGISTRY).decode())
        assert delta(before, after, "c3po_webhook_deliveries_total", outcome="refused") == 1

    async def test_retry_after_is_respected_within_the_schedule_s_longest_pause(self, client, scaled, admin):
        _, headers = admin
        with serve(lambda _: (429, {"Retry-After": "2"}, b"slow down")) as receiver:
            await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                (outbox_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            attempt = await attempt_delivery(outbox_id)
            assert attempt is not None and attempt.retry_at is not None
            wait = (attempt.retry_at - datetime.now(UTC)).total_seconds()
            assert 1.5 < wait <= 2.1  # not the schedule's 0.2 s
            receiver.respond = lambda _: (503, {"Retry-After": "3600"}, b"")
            await _make_due(outbox_id)
            attempt = await attempt_delivery(outbox_id)
            wait = (attempt.retry_at - datetime.now(UTC)).total_seconds()
            assert wait <= 3.2 * 1.1 + 0.1  # an hour asked, the schedule's longest pause given

    async def test_the_schedule_runs_out_and_the_delivery_is_given_up(self, client, set_env, admin):
        set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8", WEBHOOK_RETRY_SCHEDULE="0.05,0.05")
        _, headers = admin
        before = parse(generate_latest(WORKER_REGISTRY).decode())
        with serve(lambda _: (500, {}, b"x" * 10_000)) as receiver:
            endpoint_id, _ = await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            await drain()
            assert len(receiver.requests) == 3  # the first attempt and the schedule's two retries
        (listed,) = (await client.get(f"{API}/{endpoint_id}/deliveries", headers=headers)).json()["items"]
        assert (listed["status"], listed["attempts"], listed["last_status_code"]) == ("failed", 3, 500)
        assert listed["next_attempt_at"] is None
        assert len(listed["last_response_body"]) <= 2049  # capped (and marked cut)
        after = parse(generate_latest(WORKER_REGISTRY).decode())
        assert delta(before, after, "c3po_webhook_deliveries_total", outcome="failed_attempt") == 3
        assert delta(before, after, "c3po_webhook_deliveries_total", outcome="given_up") == 1

    @pytest.mark.parametrize(
        ("answer", "error"),
        [((302, {"Location": "http://127.0.0.1:1/elsewhere"}, b""), "answered 302"), (None, "")],
    )
    async def test_a_redirect_is_not_followed_and_a_dropped_connection_is_retried(
        self, client, scaled, admin, answer, error
    ):
        _, headers = admin
        with serve(lambda _: answer) as receiver:
            await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                (outbox_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            attempt = await attempt_delivery(outbox_id)
            assert attempt is not None and not attempt.sent and attempt.retry_at is not None
            assert len(receiver.requests) == 1
        (row,) = await webhook_rows()
        assert error in row.last_error

    async def test_a_slow_receiver_is_cut_off_at_the_timeout(self, client, set_env, admin):
        set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8", WEBHOOK_RETRY_SCHEDULE=SCALED, WEBHOOK_TIMEOUT_SECONDS="0.3")
        _, headers = admin

        def slow(_: Request):
            time.sleep(1.5)
            return 200, {}, b"too late"

        with serve(slow) as receiver:
            await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                (outbox_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            started = time.monotonic()
            attempt = await attempt_delivery(outbox_id)
            assert time.monotonic() - started < 1.2
        assert attempt is not None and not attempt.sent
        (row,) = await webhook_rows()
        assert "within 0.3 s" in row.last_error

    async def test_an_endpoint_failing_for_days_is_disabled_and_its_admins_emailed(
        self, client, session, scaled, admin
    ):
        admin_user, headers = admin
        with serve(lambda _: (500, {}, b"broken")) as receiver:
            endpoint_id, _ = await add_endpoint(client, headers, receiver.url)
            await session.execute(
                update(WebhookEndpoint).values(failing_since=func.now() - timedelta(days=5, minutes=1))
            )
            await session.commit()
            async with unit_of_work() as db:
                (outbox_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            attempt = await attempt_delivery(outbox_id)
        assert attempt is not None and attempt.retry_at is None  # disabled: nothing more is tried
        shown = (await client.get(f"{API}/{endpoint_id}", headers=headers)).json()
        assert shown["is_active"] is False and "5 days" in shown["disabled_reason"]
        emails = list(await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "email")))
        assert [(e.payload["to"], e.payload["template"]) for e in emails] == [(admin_user.email, "webhook_disabled")]
        back_on = await client.patch(f"{API}/{endpoint_id}", json={"is_active": True}, headers=headers)
        assert back_on.json()["disabled_reason"] is None and back_on.json()["failing_since"] is None


async def _make_due(outbox_id: int) -> None:
    async with unit_of_work() as db:
        await db.execute(update(OutboxMessage).where(OutboxMessage.id == outbox_id).values(next_attempt_at=func.now()))


class TestSecrets:
    async def test_after_a_rotation_both_secrets_sign_and_each_verifies_on_its_own(self, client, scaled, admin):
        _, headers = admin
        with serve() as receiver:
            endpoint_id, old = await add_endpoint(client, headers, receiver.url)
            rotated = await client.post(f"{API}/{endpoint_id}/rotate-secret", headers=headers)
            assert rotated.status_code == 200
            new = rotated.json()["secret"]
            assert new != old and rotated.json()["previous_secret_until"] is not None
            async with unit_of_work() as db:
                await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            await drain()
            (request,) = receiver.requests
            signatures = request.headers["webhook-signature"].split(" ")
            assert len(signatures) == 2
            msg_id, stamp = request.headers["webhook-id"], int(request.headers["webhook-timestamp"])
            at = datetime.fromtimestamp(stamp, UTC)
            body = request.body.decode()
            assert signatures == [Webhook(new).sign(msg_id, at, body), Webhook(old).sign(msg_id, at, body)]
            for secret in (new, old):
                Webhook(secret).verify(request.body, request.headers)

            async with unit_of_work() as db:  # the overlap is over: the new secret alone
                await db.execute(update(WebhookEndpoint).values(previous_secret_until=func.now()))
                await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "2"})])
            await drain()
            last = receiver.requests[-1]
            assert len(last.headers["webhook-signature"].split(" ")) == 1
            Webhook(new).verify(last.body, last.headers)
            with pytest.raises(Exception, match="No matching signature"):
                Webhook(old).verify(last.body, last.headers)

    async def test_the_secret_is_shown_once_and_stored_sealed(self, client, session, scaled, admin):
        _, headers = admin
        endpoint_id, secret = await add_endpoint(client, headers, "https://hooks.example.com/c3po")
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        shown = await client.get(f"{API}/{endpoint_id}", headers=headers)
        listed = await client.get(API, headers=headers)
        assert secret not in shown.text and secret not in listed.text and "secret" not in shown.json()
        stored = await session.scalar(select(WebhookEndpoint.secret_encrypted))
        assert secret.removeprefix("whsec_") not in stored


class TestDeliveriesView:
    async def test_deliveries_show_each_attempt_s_outcome_and_redeliver_sends_the_same_webhook_id(
        self, client, scaled, admin
    ):
        _, headers = admin
        before = parse(generate_latest(WORKER_REGISTRY).decode())
        with serve(flaky(0.01)) as receiver:
            endpoint_id, secret = await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                (outbox_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            await asyncio.sleep(0.02)
            await drain()
            page = (await client.get(f"{API}/{endpoint_id}/deliveries", headers=headers)).json()
            assert page["total"] == 1
            (item,) = page["items"]
            assert (item["id"], item["status"], item["attempts"], item["last_status_code"]) == (
                outbox_id,
                "delivered",
                1,
                200,
            )
            assert item["event_type"] == "user.erased" and item["webhook_id"].startswith("msg_")
            assert item["last_latency_ms"] is not None and item["delivered_at"] is not None

            again = await client.post(f"{API}/{endpoint_id}/deliveries/{outbox_id}/redeliver", headers=headers)
            assert again.status_code == 202
            assert again.json()["status"] == "pending"
            await drain()
            seen = verified(receiver, secret)
        assert [s.webhook_id for s in seen] == [item["webhook_id"]] * 2
        (item,) = (await client.get(f"{API}/{endpoint_id}/deliveries", headers=headers)).json()["items"]
        assert (item["status"], item["attempts"]) == ("delivered", 2)
        after = parse(generate_latest(WORKER_REGISTRY).decode())
        assert delta(before, after, "c3po_webhook_deliveries_total", outcome="delivered") == 2
        async with get_sessionmaker()() as db:
            assert await db.scalar(select(func.count()).select_from(WebhookAttempt)) == 2

    async def test_unknown_ids_and_non_admins_get_problems_with_stable_codes(self, client, session, scaled, admin):
        _, headers = admin
        endpoint_id, _ = await add_endpoint(client, headers, "https://hooks.example.com/a")
        missing = "00000000-0000-0000-0000-000000000001"
        assert (await client.get(f"{API}/{missing}", headers=headers)).json()["code"] == "webhook_not_found"
        redeliver = await client.post(f"{API}/{endpoint_id}/deliveries/99/redeliver", headers=headers)
        assert (redeliver.status_code, redeliver.json()["code"]) == (404, "webhook_delivery_not_found")
        someone = await headers_for(await create_user(session))
        assert (await client.get(API, headers=someone)).status_code == 403
        assert (await client.get(API)).status_code == 401


class TestManagement:
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"url": "ftp://example.com/x", "event_types": ["user.erased"]}, "invalid_webhook_url"),
            ({"url": "https://user:pw@example.com/x", "event_types": ["user.erased"]}, "invalid_webhook_url"),
            ({"url": "http://10.1.2.3/x", "event_types": ["user.erased"]}, "invalid_webhook_url"),
            ({"url": "http://[::ffff:169.254.169.254]/x", "event_types": ["user.erased"]}, "invalid_webhook_url"),
            ({"url": "https://example.com/x", "event_types": ["appointment.exploded"]}, "validation_error"),
            ({"url": "https://example.com/x", "event_types": []}, "validation_error"),
            ({"url": "https://example.com/" + "x" * 2100, "event_types": ["user.erased"]}, "validation_error"),
            ({"url": "https://example.com/x", "event_types": ["user.erased"], "secret": "mine"}, "validation_error"),
        ],
    )
    async def test_bad_endpoints_are_refused(self, client, admin, body, code):
        _, headers = admin
        response = await client.post(API, json=body, headers=headers)
        assert (response.status_code, response.json()["code"]) == (422, code)

    async def test_create_list_edit_and_delete(self, client, scaled, admin):
        _, headers = admin
        endpoint_id, _ = await add_endpoint(
            client, headers, "https://hooks.example.com/a", ["user.erased", "user.erased"], description="CRM"
        )
        listed = (await client.get(API, headers=headers)).json()
        assert listed["total"] == 1 and listed["items"][0]["event_types"] == ["user.erased"]
        edited = await client.patch(
            f"{API}/{endpoint_id}", json={"event_types": ["series.created"], "is_active": False}, headers=headers
        )
        assert edited.json()["event_types"] == ["series.created"] and edited.json()["is_active"] is False
        bad = await client.patch(f"{API}/{endpoint_id}", json={"url": "gopher://x"}, headers=headers)
        assert bad.json()["code"] == "invalid_webhook_url"
        assert (await client.delete(f"{API}/{endpoint_id}", headers=headers)).status_code == 204
        assert (await client.get(f"{API}/{endpoint_id}", headers=headers)).status_code == 404

    async def test_a_deleted_endpoint_s_pending_deliveries_are_not_sent(self, client, scaled, admin):
        _, headers = admin
        with serve() as receiver:
            endpoint_id, _ = await add_endpoint(client, headers, receiver.url)
            async with unit_of_work() as db:
                await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "1"})])
            assert (await client.delete(f"{API}/{endpoint_id}", headers=headers)).status_code == 204
            await drain()
            assert receiver.requests == []
        (row,) = await webhook_rows()
        assert row.failed_at is not None and row.last_error == "endpoint deleted"


class TestDataRights:
    async def test_export_lists_deliveries_about_me_and_erasure_leaves_ids_only(
        self, client, session, scaled, admin, booking_world
    ):
        _, headers = admin
        staff, service, _, customer = booking_world
        as_customer = await headers_for(customer)
        with serve() as receiver:
            await add_endpoint(client, headers, receiver.url, ["appointment.created", "user.erased"])
            booked = await book(
                client, as_customer, service, staff, local(days_ahead(3), 9), notes="allergic to penicillin"
            )
            exported = (await client.get("/api/v1/users/me/export", headers=as_customer)).json()
            (delivery,) = exported["webhook_deliveries"]
            assert delivery["event_type"] == "appointment.created"
            assert delivery["data"]["notes"] == "allergic to penicillin"
            staff_export = (await client.get("/api/v1/users/me/export", headers=await headers_for(staff))).json()
            assert len(staff_export["webhook_deliveries"]) == 1

            assert (await client.delete("/api/v1/users/me", headers=as_customer)).status_code == 204
            rows = await webhook_rows()
        created = next(r for r in rows if r.payload["type"] == "appointment.created")
        data = created.payload["body"]["data"]
        assert data["id"] == booked.json()["id"] and data["client_id"] == str(customer.id)
        assert "notes" not in data and "allergic" not in json.dumps(created.payload)
        erased = next(r for r in rows if r.payload["type"] == "user.erased")
        assert erased.payload["body"]["data"] == {"id": str(customer.id)}


class TestPureParts:
    def test_retry_after_reads_seconds_and_http_dates(self):
        from email.utils import format_datetime

        from app.services.integrations.webhook_delivery import _retry_after

        assert _retry_after("120") == 120
        soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        assert 25 < _retry_after(soon) <= 30
        past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
        assert _retry_after(past) == 0
        assert _retry_after("soon, maybe") is None and _retry_after(None) is None

    def test_erasure_keeps_ids_at_every_depth(self):
        from app.services.integrations.webhook_deliveries import ids_only

        data = {"series_id": "s", "appointments": [{"id": "a", "notes": "private", "staff_id": "t"}], "n": 3}
        assert ids_only(data) == {"series_id": "s", "appointments": [{"id": "a", "staff_id": "t"}]}
