"""Webhooks in the panel: endpoints (managed through the API, which shows a secret once; read here),
their deliveries (outbox rows of kind "webhook") with a redeliver button, and each attempt."""

import uuid
from typing import Any

from sqladmin import expose
from sqlalchemy import Select, func, select
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.admin.calls import Refused, as_admin
from app.admin.records import ReadOnly
from app.models import OutboxMessage, WebhookAttempt, WebhookEndpoint
from app.services.integrations import webhook_deliveries
from app.services.integrations.webhooks import KIND, NoSuchDelivery


class WebhookEndpointAdmin(ReadOnly, model=WebhookEndpoint):
    name, name_plural, icon = "Webhook endpoint", "Webhook endpoints", "fa-solid fa-satellite-dish"
    column_list = [
        WebhookEndpoint.url,
        WebhookEndpoint.event_types,
        WebhookEndpoint.is_active,
        WebhookEndpoint.disabled_reason,
        WebhookEndpoint.failing_since,
        WebhookEndpoint.created_at,
    ]
    column_details_exclude_list = [WebhookEndpoint.secret_encrypted, WebhookEndpoint.previous_secret_encrypted]
    column_searchable_list = [WebhookEndpoint.url, WebhookEndpoint.description]
    column_default_sort = [(WebhookEndpoint.created_at, True)]


def _payload(name: str):
    return lambda model, attribute: model.payload.get(name)


class WebhookDeliveryAdmin(ReadOnly, model=OutboxMessage):
    """The outbox's webhook rows: one per (event, endpoint)."""

    name, name_plural, icon = "Webhook delivery", "Webhook deliveries", "fa-solid fa-paper-plane"
    column_list = [
        OutboxMessage.id,
        OutboxMessage.created_at,
        "event",
        "endpoint",
        OutboxMessage.attempts,
        OutboxMessage.next_attempt_at,
        OutboxMessage.sent_at,
        OutboxMessage.failed_at,
    ]
    column_labels = {"attempts": "failed attempts", "sent_at": "delivered at"}
    column_formatters = {"event": _payload("type"), "endpoint": _payload("endpoint_id")}
    column_details_list = [
        OutboxMessage.id,
        OutboxMessage.created_at,
        OutboxMessage.payload,
        OutboxMessage.attempts,
        OutboxMessage.last_error,
        OutboxMessage.next_attempt_at,
        OutboxMessage.sent_at,
        OutboxMessage.failed_at,
    ]
    column_default_sort = [(OutboxMessage.id, True)]
    details_template = "admin/webhook_delivery_details.html"

    def list_query(self, request: Request) -> Select:
        return select(OutboxMessage).where(OutboxMessage.kind == KIND)

    def count_query(self, request: Request) -> Select:
        return select(func.count(OutboxMessage.id)).where(OutboxMessage.kind == KIND)

    def details_query(self, request: Request) -> Select:
        return super().details_query(request).where(OutboxMessage.kind == KIND)

    @expose("/redeliver/{pk}", methods=["POST"])
    async def redeliver(self, request: Request) -> Response:
        """Send it again with the same webhook-id; its attempts start over (the API's redeliver)."""
        pk = int(request.path_params["pk"])
        details = request.url_for("admin:details", identity=self.identity, pk=str(pk))
        try:
            await as_admin(request, lambda session, actor: _redeliver(session, actor, pk))
        except Refused as refused:
            return RedirectResponse(details.include_query_params(error=str(refused)), status_code=303)
        return RedirectResponse(details.include_query_params(done="redeliver"), status_code=303)


WebhookDeliveryAdmin.identity = "webhook-delivery"  # the outbox view owns "outbox-message"


async def _redeliver(session: Any, actor: Any, delivery_id: int) -> None:
    row = await session.get(OutboxMessage, delivery_id)
    if row is None or row.kind != KIND:
        raise NoSuchDelivery()
    await webhook_deliveries.redeliver(session, actor, uuid.UUID(row.payload["endpoint_id"]), delivery_id)


class WebhookAttemptAdmin(ReadOnly, model=WebhookAttempt):
    name, name_plural, icon = "Webhook attempt", "Webhook attempts", "fa-solid fa-list-check"
    column_list = [
        WebhookAttempt.attempted_at,
        WebhookAttempt.outbox_id,
        WebhookAttempt.status_code,
        WebhookAttempt.latency_ms,
        WebhookAttempt.error,
    ]
    column_labels = {"outbox_id": "delivery"}
    column_searchable_list = [WebhookAttempt.outbox_id]
    column_default_sort = [(WebhookAttempt.id, True)]
