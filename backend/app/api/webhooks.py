"""Webhook endpoints and their deliveries (admins only; Standard Webhooks 1.0, docs/api.md "Webhooks")."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import AdminUser, DbSession, Limit, Offset
from app.api.problems import problem_responses
from app.schemas.webhook import (
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookOut,
    WebhookPage,
    WebhookSecret,
    WebhookUpdate,
)
from app.services.integrations import webhook_deliveries, webhooks
from app.services.integrations.webhooks import (
    DeliveryInProgress,
    InvalidWebhookUrl,
    NoSuchDelivery,
    NoSuchEndpoint,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("", operation_id="webhooks-list", summary="List webhook endpoints")
async def list_endpoints(admin: AdminUser, session: DbSession, limit: Limit = 50, offset: Offset = 0) -> WebhookPage:
    """Every endpoint, oldest first (secrets are never shown again)."""
    rows, total = await webhooks.list_endpoints(session, limit=limit, offset=offset)
    return WebhookPage(items=[WebhookOut.model_validate(e) for e in rows], total=total, limit=limit, offset=offset)


@router.post(
    "",
    operation_id="webhooks-create",
    status_code=status.HTTP_201_CREATED,
    summary="Create a webhook endpoint",
    responses=problem_responses(InvalidWebhookUrl),
)
async def create(body: WebhookCreate, admin: AdminUser, session: DbSession) -> WebhookCreated:
    """Add an endpoint; the answer carries its signing secret, shown this once."""
    endpoint, secret = await webhooks.create_endpoint(session, admin, body.model_dump())
    return WebhookCreated(**WebhookOut.model_validate(endpoint).model_dump(), secret=secret)


@router.get(
    "/{webhook_id}",
    operation_id="webhooks-get",
    summary="Get a webhook endpoint",
    responses=problem_responses(NoSuchEndpoint),
)
async def get(webhook_id: uuid.UUID, admin: AdminUser, session: DbSession) -> WebhookOut:
    """One endpoint, with why it was disabled if c3po turned it off."""
    return WebhookOut.model_validate(await webhooks.get_endpoint(session, webhook_id))


@router.patch(
    "/{webhook_id}",
    operation_id="webhooks-update",
    summary="Edit a webhook endpoint",
    responses=problem_responses(NoSuchEndpoint, InvalidWebhookUrl),
)
async def update(webhook_id: uuid.UUID, body: WebhookUpdate, admin: AdminUser, session: DbSession) -> WebhookOut:
    """Change the fields sent; `is_active: true` turns a disabled endpoint back on."""
    changes = body.model_dump(exclude_unset=True)
    return WebhookOut.model_validate(await webhooks.update_endpoint(session, admin, webhook_id, changes))


@router.delete(
    "/{webhook_id}",
    operation_id="webhooks-delete",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook endpoint",
    responses=problem_responses(NoSuchEndpoint),
)
async def delete(webhook_id: uuid.UUID, admin: AdminUser, session: DbSession) -> None:
    """Delete the endpoint; its undelivered events are not sent."""
    await webhooks.delete_endpoint(session, admin, webhook_id)


@router.post(
    "/{webhook_id}/rotate-secret",
    operation_id="webhooks-rotate-secret",
    summary="Rotate a webhook endpoint's secret",
    responses=problem_responses(NoSuchEndpoint),
)
async def rotate_secret(webhook_id: uuid.UUID, admin: AdminUser, session: DbSession) -> WebhookSecret:
    """A new secret, shown once; the old one signs too until `previous_secret_until`."""
    endpoint, secret = await webhooks.rotate_secret(session, admin, webhook_id)
    return WebhookSecret(secret=secret, previous_secret_until=endpoint.previous_secret_until)


@router.get(
    "/{webhook_id}/deliveries",
    operation_id="webhooks-deliveries",
    summary="List a webhook endpoint's deliveries",
    responses=problem_responses(NoSuchEndpoint),
)
async def deliveries(
    webhook_id: uuid.UUID, admin: AdminUser, session: DbSession, limit: Limit = 50, offset: Offset = 0
) -> WebhookDeliveryPage:
    """Newest first: attempts, the last status code, latency and error, and the next retry."""
    items, total = await webhook_deliveries.list_deliveries(session, webhook_id, limit=limit, offset=offset)
    return WebhookDeliveryPage(items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    operation_id="webhooks-redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a webhook delivery again",
    responses=problem_responses(NoSuchEndpoint, NoSuchDelivery, DeliveryInProgress),
)
async def redeliver(
    webhook_id: uuid.UUID, delivery_id: DeliveryId, admin: AdminUser, session: DbSession
) -> WebhookDeliveryOut:
    """Queue it again now, with the same `webhook-id`; its attempts start over."""
    await webhook_deliveries.redeliver(session, admin, webhook_id, delivery_id)
    return await webhook_deliveries.one(session, webhook_id, delivery_id)
