"""Webhook endpoints (admins manage them) and the events written for them (Standard Webhooks 1.0).

An event is written to the outbox in the transaction of the change that caused it: one row of kind
"webhook" per active endpoint subscribed to its type, carrying the endpoint's id, the `webhook-id`
(`msg_` + random, the same on every attempt), the type, the ids of the people it concerns and the
body `{type, timestamp, data}` (`data` as the REST API answers it). A rolled-back change leaves no
row, so nothing is sent; a committed one is handed to the worker (`webhook_delivery.py` sends it).

The signing secret (`whsec_` + base64 of 32 random bytes) is shown once, at creation and at
rotation, and kept sealed (app/utils/secretbox.py). After a rotation the old secret keeps signing
beside the new one for `WEBHOOK_SECRET_OVERLAP_HOURS`, so receivers can switch without a gap.
"""

import base64
import json
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.errors import AppError, Conflict, NotFound
from app.models import OutboxMessage, User, WebhookEndpoint
from app.schemas.common import iso_z
from app.services import audit
from app.services.integrations import egress
from app.services.messaging import outbox
from app.services.pagination import paginate
from app.utils import secretbox
from app.utils.time import utcnow

KIND = "webhook"  # the outbox kind
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_PURPOSE = "webhook-secret"


class InvalidWebhookUrl(AppError):
    status, code, title = 422, "invalid_webhook_url", "This URL cannot receive webhooks"


class NoSuchEndpoint(NotFound):
    code, title = "webhook_not_found", "No such webhook endpoint"


class NoSuchDelivery(NotFound):
    code, title = "webhook_delivery_not_found", "No such webhook delivery"


class DeliveryInProgress(Conflict):
    code, title = "webhook_delivery_in_progress", "The delivery is being attempted right now"


# --- secrets ------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _seal(endpoint_id: uuid.UUID, secret: str) -> str:
    return secretbox.seal(secret, purpose=_PURPOSE, context=str(endpoint_id))


def signing_secrets(endpoint: WebhookEndpoint) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its overlap."""
    opened = [secretbox.open_sealed(endpoint.secret_encrypted, purpose=_PURPOSE, context=str(endpoint.id))]
    until = endpoint.previous_secret_until
    if endpoint.previous_secret_encrypted and until is not None and until > utcnow():
        opened.append(
            secretbox.open_sealed(endpoint.previous_secret_encrypted, purpose=_PURPOSE, context=str(endpoint.id))
        )
    return opened


# --- endpoints ----------------------------------------------------------------------------------


def _checked_url(url: str) -> str:
    try:
        return egress.check_url(url)
    except egress.EgressRefused as exc:
        raise InvalidWebhookUrl(str(exc)) from None


async def list_endpoints(session: AsyncSession, *, limit: int, offset: int) -> tuple[list[WebhookEndpoint], int]:
    query = select(WebhookEndpoint)
    return await paginate(session, query, WebhookEndpoint.created_at, WebhookEndpoint.id, limit=limit, offset=offset)


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NoSuchEndpoint()
    return endpoint


def _snapshot(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What the audit log keeps of an endpoint (never its secrets)."""
    return {
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "is_active": endpoint.is_active,
        "description": endpoint.description,
    }


async def create_endpoint(session: AsyncSession, actor: User, fields: dict[str, Any]) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (returned once, stored sealed)."""
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        url=_checked_url(fields["url"]),
        event_types=list(fields["event_types"]),
        is_active=fields.get("is_active", True),
        description=fields.get("description", ""),
    )
    secret = new_secret()
    endpoint.secret_encrypted = _seal(endpoint.id, secret)
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint)
    await _audit(session, actor, endpoint, "webhook.create", None)
    return endpoint, secret


async def update_endpoint(
    session: AsyncSession, actor: User, endpoint_id: uuid.UUID, changes: dict[str, Any]
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, endpoint_id)
    before = _snapshot(endpoint)
    if "url" in changes:
        endpoint.url = _checked_url(changes["url"])
    if "event_types" in changes:
        endpoint.event_types = list(changes["event_types"])
    if "description" in changes:
        endpoint.description = changes["description"]
    if "is_active" in changes:
        if changes["is_active"] and not endpoint.is_active:
            endpoint.disabled_reason = None
            endpoint.failing_since = None
        endpoint.is_active = changes["is_active"]
    await session.flush()
    await session.refresh(endpoint)
    await _audit(session, actor, endpoint, "webhook.update", before)
    return endpoint


async def delete_endpoint(session: AsyncSession, actor: User, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint; its undelivered events are marked failed (kept for the record until retention)."""
    endpoint = await get_endpoint(session, endpoint_id)
    await session.execute(
        update(OutboxMessage)
        .where(*of_endpoint(endpoint_id), OutboxMessage.sent_at.is_(None), OutboxMessage.failed_at.is_(None))
        .values(failed_at=func.now(), last_error="endpoint deleted")
    )
    await _audit(session, actor, endpoint, "webhook.delete", _snapshot(endpoint), after=False)
    await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


async def rotate_secret(session: AsyncSession, actor: User, endpoint_id: uuid.UUID) -> tuple[WebhookEndpoint, str]:
    """A new secret signs from now on; the one it replaces signs too for the overlap."""
    endpoint = await get_endpoint(session, endpoint_id)
    secret = new_secret()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.previous_secret_until = utcnow() + timedelta(hours=get_settings().webhook_secret_overlap_hours)
    endpoint.secret_encrypted = _seal(endpoint.id, secret)
    await session.flush()
    await session.refresh(endpoint)
    await audit.record(
        session, actor_id=actor.id, action="webhook.rotate_secret", entity_type="webhook", entity_id=endpoint.id
    )
    return endpoint, secret


async def _audit(
    session: AsyncSession,
    actor: User,
    endpoint: WebhookEndpoint,
    action: str,
    before: dict[str, Any] | None,
    *,
    after: bool = True,
) -> None:
    await audit.record(
        session,
        actor_id=actor.id,
        action=action,
        entity_type="webhook",
        entity_id=endpoint.id,
        before=before,
        after=_snapshot(endpoint) if after else None,
    )


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event's `data` and the people it names (for export and erasure)."""

    data: dict[str, Any]
    people: tuple[uuid.UUID, ...] = ()


def envelope(event_type: str, data: dict[str, Any], at: Any = None) -> dict[str, Any]:
    """The body every receiver gets: `{type, timestamp, data}`."""
    return {"type": event_type, "timestamp": iso_z(at or utcnow()), "data": data}


# One row per (event, subscribed active endpoint), in one statement; no endpoint: no row, one round trip.
_EMIT = text(
    f"""
INSERT INTO outbox (kind, payload, attempts)
SELECT '{KIND}', jsonb_build_object(
           'endpoint_id', e.id::text,
           'webhook_id', 'msg_' || replace(gen_random_uuid()::text, '-', ''),
           'type', CAST(:type AS text),
           'people', event.item -> 'people',
           'body', event.item -> 'body'), 0
FROM webhook_endpoints AS e, jsonb_array_elements(CAST(:events AS jsonb)) WITH ORDINALITY AS event(item, n)
WHERE e.is_active AND CAST(:type AS text) = ANY(e.event_types)
ORDER BY event.n, e.id
RETURNING id
"""
)


async def emit(session: AsyncSession, event_type: str, events: Sequence[Event]) -> list[int]:
    """Write `events` of `event_type` for every endpoint subscribed; they leave only after commit."""
    if not events:
        return []
    at = utcnow()
    items = [
        {"body": envelope(event_type, event.data, at), "people": [str(p) for p in dict.fromkeys(event.people)]}
        for event in events
    ]
    ids = list(await session.scalars(_EMIT, {"type": event_type, "events": json.dumps(items)}))
    if ids:
        after_commit(session, partial(_hand_over, ids))
    return ids


async def _hand_over(outbox_ids: Iterable[int]) -> None:
    for outbox_id in outbox_ids:
        await outbox.dispatch(outbox_id)


def appointment_people(appointment: Any) -> tuple[uuid.UUID, ...]:
    return (appointment.client_id, appointment.staff_id)


# Which webhook event an appointment's audited action is (a notes edit is none).
EVENT_OF_ACTION = {
    "appointment.create": "appointment.created",
    "appointment.confirm": "appointment.confirmed",
    "appointment.reschedule": "appointment.rescheduled",
    "appointment.cancel": "appointment.cancelled",
    "appointment.complete": "appointment.completed",
    "appointment.no_show": "appointment.no_show",
}


def of_endpoint(endpoint_id: uuid.UUID) -> tuple[Any, ...]:
    """The outbox rows that are this endpoint's deliveries (served by `ix_outbox_webhook_endpoint`)."""
    return (OutboxMessage.kind == KIND, OutboxMessage.payload["endpoint_id"].astext == str(endpoint_id))
