"""Webhook deliveries as people see them: an endpoint's list (each with its last attempt), sending
one again, and a person's data rights over the deliveries that concern them.

A delivery is the outbox row written for one (event, endpoint); its attempts are
`webhook_attempts` rows. A delivery concerns the people listed in its payload's `people` (the
client and staff member of the appointments in it): those are exported to them and, on erasure,
its `data` keeps ids only.
"""

import secrets
import uuid
from datetime import datetime
from functools import partial
from typing import Any

from loguru import logger
from sqlalchemy import func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import after_commit
from app.models import OutboxMessage, User, WebhookAttempt
from app.redis import get_redis
from app.schemas.webhook import WebhookDeliveryOut
from app.services import audit
from app.services.integrations.webhooks import (
    KIND,
    DeliveryInProgress,
    NoSuchDelivery,
    get_endpoint,
    of_endpoint,
)
from app.services.messaging import outbox
from app.utils.time import utcnow


def _status(row: OutboxMessage) -> str:
    return "delivered" if row.sent_at else "failed" if row.failed_at else "pending"


def _query(endpoint_id: uuid.UUID) -> Any:
    """The endpoint's deliveries, each with its last attempt and how many attempts it had."""
    last = (
        select(
            WebhookAttempt.status_code, WebhookAttempt.latency_ms, WebhookAttempt.error, WebhookAttempt.response_body
        )
        .where(WebhookAttempt.outbox_id == OutboxMessage.id)
        .order_by(WebhookAttempt.id.desc())
        .limit(1)
        .lateral("last")
    )
    tried = select(func.count()).where(WebhookAttempt.outbox_id == OutboxMessage.id).scalar_subquery()
    return select(OutboxMessage, last, tried.label("tried")).outerjoin(last, true()).where(*of_endpoint(endpoint_id))


async def list_deliveries(
    session: AsyncSession, endpoint_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[WebhookDeliveryOut], int]:
    """Newest first, each with its last attempt's status code, latency and error."""
    await get_endpoint(session, endpoint_id)
    total = await session.scalar(select(func.count()).select_from(OutboxMessage).where(*of_endpoint(endpoint_id)))
    page = _query(endpoint_id).order_by(OutboxMessage.id.desc()).limit(limit).offset(offset)
    return [_view(row) for row in await session.execute(page)], total or 0


async def one(session: AsyncSession, endpoint_id: uuid.UUID, delivery_id: int) -> WebhookDeliveryOut:
    row = (await session.execute(_query(endpoint_id).where(OutboxMessage.id == delivery_id))).one_or_none()
    if row is None:
        raise NoSuchDelivery()
    return _view(row)


def _view(row: Any) -> WebhookDeliveryOut:
    message: OutboxMessage = row.OutboxMessage
    status = _status(message)
    return WebhookDeliveryOut(
        id=message.id,
        event_type=str(message.payload.get("type", "")),
        webhook_id=str(message.payload.get("webhook_id", "")),
        status=status,  # type: ignore[arg-type]
        attempts=row.tried,
        last_status_code=row.status_code,
        last_latency_ms=row.latency_ms,
        last_error=None if status == "delivered" else (row.error or message.last_error),
        last_response_body=row.response_body,
        next_attempt_at=message.next_attempt_at if status == "pending" else None,
        created_at=message.created_at,
        delivered_at=message.sent_at,
        failed_at=message.failed_at,
    )


async def redeliver(session: AsyncSession, actor: User, endpoint_id: uuid.UUID, delivery_id: int) -> OutboxMessage:
    """Send a delivery again, with the same `webhook-id` (receivers that saw it deduplicate): its
    attempts start over now, whatever became of it."""
    await get_endpoint(session, endpoint_id)
    row = await session.scalar(
        select(OutboxMessage).where(OutboxMessage.id == delivery_id, *of_endpoint(endpoint_id)).with_for_update()
    )
    if row is None:
        raise NoSuchDelivery()
    if row.sent_at is None and row.failed_at is None and row.claimed_until and row.claimed_until > utcnow():
        raise DeliveryInProgress("An attempt is under way; see its outcome in the deliveries list")
    await get_redis().delete(outbox.sent_key(row.id))  # else a taken-over claim would count it sent already
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == row.id)
        .values(
            sent_at=None,
            failed_at=None,
            attempts=0,
            last_error=None,
            next_attempt_at=func.now(),
            claimed_by=None,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    await audit.record(session, actor_id=actor.id, action="webhook.redeliver", entity_type="outbox", entity_id=row.id)
    after_commit(session, partial(_queue_again, row.id))
    await session.refresh(row)
    return row


async def _queue_again(outbox_id: int) -> None:
    """A job id of its own: the row's first job id may still be taken by its finished first attempt."""
    pool = await outbox.get_arq_pool()
    job = f"{outbox.job_id(outbox_id)}:again:{secrets.token_hex(4)}"
    await pool.enqueue_job(outbox.DELIVER_JOB, outbox_id, _job_id=job)


# --- data rights ----------------------------------------------------------------------------------


def _about(user_id: uuid.UUID) -> tuple[Any, ...]:
    return (OutboxMessage.kind == KIND, OutboxMessage.payload["people"].contains([str(user_id)]))


async def of_person(session: AsyncSession, user_id: uuid.UUID) -> list[OutboxMessage]:
    """The deliveries about the person, oldest first (the export)."""
    query = select(OutboxMessage).where(*_about(user_id)).order_by(OutboxMessage.created_at, OutboxMessage.id)
    return list(await session.scalars(query))


def ids_only(value: Any) -> Any:
    """What of an event's `data` survives an erasure: `id` and `*_id` fields, nested lists included."""
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            if key == "id" or key.endswith("_id"):
                kept[key] = item
            elif isinstance(item, list | dict):
                kept[key] = ids_only(item)
        return kept
    if isinstance(value, list):
        return [ids_only(item) for item in value]
    return None


async def forget_person(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Erasure: the deliveries about the person keep ids only (those still pending are sent so)."""
    count = 0
    for row in await of_person(session, user_id):
        body = dict(row.payload.get("body") or {})
        body["data"] = ids_only(body.get("data"))
        row.payload = {**row.payload, "body": body}
        count += 1
    if count:
        logger.info("erasure: {} webhook deliveries reduced to ids", count)


def export_view(row: OutboxMessage) -> dict[str, Any]:
    """A delivery in the person's export: what was sent about them, and when."""
    delivered: datetime | None = row.sent_at
    return {
        "id": row.id,
        "event_type": str(row.payload.get("type", "")),
        "webhook_id": str(row.payload.get("webhook_id", "")),
        "status": _status(row),
        "data": (row.payload.get("body") or {}).get("data"),
        "created_at": row.created_at,
        "delivered_at": delivered,
    }
