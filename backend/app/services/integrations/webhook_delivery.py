"""Send one webhook delivery (an outbox row of kind "webhook"): the worker's handler for that kind.

One attempt: read the endpoint, sign the body (Standard Webhooks 1.0: `webhook-id`, the same on
every attempt; `webhook-timestamp`, this attempt's time; `webhook-signature`, `v1,<base64>` for
each signing secret), POST it through the egress guard (no redirects followed, a timeout, the
answer's body read up to a cap), record the attempt, and say what comes next:

- 2xx: delivered (the endpoint's failure streak ends);
- 410 Gone: the endpoint is disabled and nothing more is tried;
- the egress guard refuses the address: given up at once (an allow-list change is an admin's job);
- anything else (other statuses, no connection, a timeout): retried on `WEBHOOK_RETRY_SCHEDULE`
  with up to 10 % jitter; a 429 or 503 with `Retry-After` waits at least that long (at most the
  schedule's longest pause). An endpoint whose attempts all failed for `WEBHOOK_DISABLE_AFTER_DAYS`
  is disabled and every admin is emailed, in the transaction that records the attempt.
"""

import json
import random
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from loguru import logger
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks import Webhook

from app.config import get_settings
from app.database import get_sessionmaker, unit_of_work
from app.metrics import WEBHOOK_DELIVERIES, WEBHOOK_SEND_SECONDS
from app.models import Role, User, WebhookAttempt, WebhookEndpoint
from app.services.integrations import egress
from app.services.integrations.webhooks import signing_secrets
from app.services.messaging import outbox

RESPONSE_BYTES = 2048  # of the receiver's answer, read and recorded; the rest is never read
JITTER = 0.1


class DeliveryFailed(Exception):
    """A failed attempt: `final` when nothing more is to be tried, `retry_after` a receiver's wish."""

    def __init__(self, message: str, *, outcome: str, final: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.final = final
        self.retry_after = retry_after


def sign(secrets: list[str], webhook_id: str, at: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated (the spec's form)."""
    return " ".join(Webhook(secret).sign(webhook_id, at, body) for secret in secrets)


def headers_for(secrets: list[str], webhook_id: str, at: datetime, body: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "c3po-webhooks/1",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": sign(secrets, webhook_id, at, body),
    }


def encode(body: Mapping[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


async def send_webhook(outbox_id: int, created_at: datetime, payload: Mapping[str, Any]) -> None:
    """The outbox handler: returns once delivered, raises `DeliveryFailed` otherwise."""
    endpoint = await _endpoint(payload["endpoint_id"])
    if endpoint is None or not endpoint.is_active:
        error = "the endpoint was deleted" if endpoint is None else "the endpoint is disabled"
        await _record(outbox_id, None, status=None, seconds=None, error=error, body=None)
        raise _counted(DeliveryFailed(error, outcome="disabled", final=True))
    body = encode(payload["body"])
    now = datetime.now(UTC)
    headers = headers_for(signing_secrets(endpoint), payload["webhook_id"], now, body)
    timeout = get_settings().webhook_timeout_seconds
    try:
        response = await egress.request(
            "POST", endpoint.url, headers=headers, content=body.encode(), timeout=timeout, max_bytes=RESPONSE_BYTES
        )
    except egress.EgressRefused as exc:
        await _record(outbox_id, endpoint.id, status=None, seconds=None, error=f"refused: {exc}", body=None)
        raise _counted(DeliveryFailed(f"refused: {exc}", outcome="refused", final=True)) from None
    except egress.EgressFailed as exc:
        failure = DeliveryFailed(str(exc), outcome="failed_attempt")
        raise _counted(await _failed(outbox_id, endpoint.id, failure, status=None, seconds=None, body=None)) from None
    WEBHOOK_SEND_SECONDS.observe(response.seconds)
    answer = response.body.decode("utf-8", "replace") + ("…" if response.truncated else "")
    if 200 <= response.status < 300:
        await _record(outbox_id, endpoint.id, status=response.status, seconds=response.seconds, error=None, body=answer)
        WEBHOOK_DELIVERIES.labels("delivered").inc()
        return
    if response.status == 410:
        error = "the receiver answered 410 Gone"
        await _record(
            outbox_id, endpoint.id, status=410, seconds=response.seconds, error=error, body=answer, disable=error
        )
        raise _counted(DeliveryFailed(error, outcome="disabled", final=True))
    retry_after = _retry_after(response.headers.get("retry-after")) if response.status in (429, 503) else None
    failure = DeliveryFailed(f"answered {response.status}", outcome="failed_attempt", retry_after=retry_after)
    raise _counted(
        await _failed(outbox_id, endpoint.id, failure, status=response.status, seconds=response.seconds, body=answer)
    )


def _counted(failure: DeliveryFailed) -> DeliveryFailed:
    WEBHOOK_DELIVERIES.labels(failure.outcome).inc()
    return failure


def retry_delay(attempts: int, error: Exception) -> timedelta | None:
    """The worker's retry policy for webhooks: the pause after `attempts` failed attempts, or None
    to give up (a final failure, or the schedule ran out)."""
    if isinstance(error, DeliveryFailed) and error.final:
        return None
    schedule = get_settings().webhook_retry_schedule
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1] * (1 + random.uniform(0, JITTER))  # noqa: S311 (spreading, not secrecy)
    if isinstance(error, DeliveryFailed) and error.retry_after is not None:
        delay = max(delay, min(error.retry_after, max(schedule)))
    return timedelta(seconds=delay)


def given_up(error: Exception) -> None:
    """Counted when the worker stops retrying because the schedule ran out (final failures are
    counted as what they were: refused, disabled)."""
    if not (isinstance(error, DeliveryFailed) and error.final):
        WEBHOOK_DELIVERIES.labels("given_up").inc()


def _retry_after(value: str | None) -> float | None:
    """`Retry-After`: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


async def _endpoint(endpoint_id: str) -> WebhookEndpoint | None:
    async with get_sessionmaker()() as session:
        return await session.get(WebhookEndpoint, uuid.UUID(endpoint_id))


async def _failed(
    outbox_id: int,
    endpoint_id: uuid.UUID,
    failure: DeliveryFailed,
    *,
    status: int | None,
    seconds: float | None,
    body: str | None,
) -> DeliveryFailed:
    """Record a failed attempt; past the endpoint's allowed failing time it is disabled (final)."""
    disabled = await _record(outbox_id, endpoint_id, status=status, seconds=seconds, error=str(failure), body=body)
    if disabled:
        return DeliveryFailed(f"{failure}; {disabled}", outcome="disabled", final=True)
    return failure


async def _record(
    outbox_id: int,
    endpoint_id: uuid.UUID | None,
    *,
    status: int | None,
    seconds: float | None,
    error: str | None,
    body: str | None,
    disable: str | None = None,
) -> str | None:
    """The attempt, and the endpoint's failure streak, in one transaction; returns why the
    endpoint was disabled now, if it was."""
    async with unit_of_work() as session:
        session.add(
            WebhookAttempt(
                outbox_id=outbox_id,
                status_code=status,
                latency_ms=None if seconds is None else round(seconds * 1000),
                error=error[:2000] if error else None,
                response_body=body,
            )
        )
        if endpoint_id is None:
            return None
        endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
        if endpoint is None:
            return None
        if error is None:
            endpoint.failing_since = None
            return None
        now = datetime.now(UTC)
        endpoint.failing_since = endpoint.failing_since or now
        days = get_settings().webhook_disable_after_days
        if disable is None and endpoint.failing_since <= now - timedelta(days=days):
            since = f"{endpoint.failing_since:%Y-%m-%d %H:%M} UTC"
            disable = f"every attempt failed for {days:g} days, since {since}"
        if disable is None or not endpoint.is_active:
            return None
        endpoint.is_active = False
        endpoint.disabled_reason = disable[:200]
        await _tell_admins(session, endpoint, disable)
        logger.warning("webhook endpoint {} disabled: {}", endpoint.id, disable)
        return disable


async def _tell_admins(session: AsyncSession, endpoint: WebhookEndpoint, reason: str) -> None:
    admins = await session.scalars(
        select(User).where(User.role == Role.admin.value, User.is_active.is_(True), User.deleted_at.is_(None))
    )
    for admin in admins:
        await outbox.queue_email(
            session,
            to=admin.email,
            template="webhook_disabled",
            locale=admin.locale,
            context={"full_name": admin.full_name, "url": endpoint.url, "reason": reason},
        )
