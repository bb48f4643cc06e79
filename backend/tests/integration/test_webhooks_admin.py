"""Webhooks in the admin panel: endpoints (secrets never shown), deliveries with a redeliver button
that goes through the same service as the API, and attempts; none of it for anyone but admins."""

import pytest
from sqlalchemy import select

from app.database import unit_of_work
from app.models import OutboxMessage, Role, WebhookEndpoint
from app.services.integrations import webhooks
from app.services.messaging.worker import attempt_delivery
from tests.factories import create_user, start_session
from tests.httpserver import serve
from tests.integration.test_admin import panel_login, post, signed_in_admin


async def one_delivery(session, url: str) -> tuple[WebhookEndpoint, str, int]:
    admin = await create_user(session, role=Role.admin)
    async with unit_of_work() as db:
        endpoint, secret = await webhooks.create_endpoint(db, admin, {"url": url, "event_types": ["user.erased"]})
        (outbox_id,) = await webhooks.emit(db, "user.erased", [webhooks.Event({"id": "42"})])
    return endpoint, secret, outbox_id


class TestWebhookViews:
    async def test_endpoints_deliveries_and_attempts_are_listed_without_secrets(self, client, session, set_env):
        set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
        with serve() as receiver:
            endpoint, secret, outbox_id = await one_delivery(session, receiver.url)
            await attempt_delivery(outbox_id)
        session.add(OutboxMessage(kind="email", payload={"to": "a@example.com"}))
        await session.commit()
        await signed_in_admin(client, session)

        endpoints = await client.get("/admin/webhook-endpoint/list")
        assert endpoints.status_code == 200 and receiver.url in endpoints.text
        details = await client.get(f"/admin/webhook-endpoint/details/{endpoint.id}")
        stored = await session.scalar(select(WebhookEndpoint.secret_encrypted))
        for page in (endpoints, details):
            assert secret not in page.text and stored not in page.text
        deliveries = await client.get("/admin/webhook-delivery/list")
        assert "user.erased" in deliveries.text and "a@example.com" not in deliveries.text
        attempts = await client.get("/admin/webhook-attempt/list")
        assert attempts.status_code == 200 and ">200<" in attempts.text.replace(" ", "")

    async def test_redeliver_queues_the_same_delivery_again(self, client, session, set_env):
        set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")
        with serve() as receiver:
            _, _, outbox_id = await one_delivery(session, receiver.url)
            await attempt_delivery(outbox_id)
            await signed_in_admin(client, session)
            page = await client.get(f"/admin/webhook-delivery/details/{outbox_id}")
            assert "Redeliver" in page.text
            done = await post(client, f"/admin/webhook-delivery/redeliver/{outbox_id}", {})
            assert "done=redeliver" in done.headers["location"]
            message = await session.get(OutboxMessage, outbox_id, populate_existing=True)
            assert message.sent_at is None and message.attempts == 0
            await attempt_delivery(outbox_id)
            assert [r.headers["webhook-id"] for r in receiver.requests] == [message.payload["webhook_id"]] * 2
        email = OutboxMessage(kind="email", payload={"to": "a@example.com"})
        session.add(email)
        await session.commit()
        refused = await post(client, f"/admin/webhook-delivery/redeliver/{email.id}", {})
        assert "webhook_delivery_not_found" in refused.headers["location"]
        assert (await client.get(f"/admin/webhook-delivery/details/{email.id}")).status_code == 404

    @pytest.mark.parametrize("role", [None, Role.staff, Role.user])
    async def test_nobody_but_admins_gets_in(self, client, session, role):
        if role is not None:
            user = await create_user(session, role=role)
            await start_session(user)
            await panel_login(client, user.email)
        for path in ("/admin/webhook-endpoint/list", "/admin/webhook-delivery/list", "/admin/webhook-attempt/list"):
            response = await client.get(path)
            assert response.status_code in (302, 303) and "/admin/login" in response.headers["location"]
        refused = await client.post("/admin/webhook-delivery/redeliver/1", data={})
        assert refused.status_code in (302, 303, 403)
