"""Write side effects into the outbox inside the caller's transaction; hand them over after commit."""

from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import unquote, urlsplit

from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name, expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import case, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.errors import Conflict
from app.models import OutboxMessage, User
from app.services import audit

DELIVER_JOB = "deliver_outbox"
_JOB_EXPIRY_MS = expires_extra_ms  # arq's default for a job queued to run now
SENTINEL_SCHEME = "redis+sentinel"
_pool: ArqRedis | None = None


def email_payload(
    *,
    to: str,
    template: str,
    locale: str,
    context: dict[str, Any],
    attachments: list[dict[str, str]] | None = None,
    secret_keys: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What an email row carries: `templates/email/{locale}/{template}.{html,txt}` for `to`.

    `attachments`: `[{filename, content, mime_type}]`, text content as is, anything else base64.
    `secret_keys`: context entries (sign-in links, say) blanked once the email is sent, so the table
    and its backups do not keep working credentials.
    """
    payload: dict[str, Any] = {"to": to, "template": template, "locale": locale, "context": context}
    if attachments:
        payload["attachments"] = attachments
    if secret_keys:
        payload["secret_keys"] = list(secret_keys)
    return payload


async def queue_email(
    session: AsyncSession,
    *,
    to: str,
    template: str,
    locale: str,
    context: dict[str, Any],
    attachments: list[dict[str, str]] | None = None,
    secret_keys: tuple[str, ...] = (),
) -> OutboxMessage:
    """Queue an email (see `email_payload`); it leaves only if the transaction commits."""
    payload = email_payload(
        to=to, template=template, locale=locale, context=context, attachments=attachments, secret_keys=secret_keys
    )
    return add_email(session, payload)


def add_email(session: AsyncSession, payload: dict[str, Any]) -> OutboxMessage:
    message = OutboxMessage(kind="email", payload=payload)
    session.add(message)  # flushed with the rest of the transaction's rows; its id exists after commit
    after_commit(session, partial(_dispatch_row, message))
    return message


async def _dispatch_row(message: OutboxMessage) -> None:
    await dispatch(message.id)


def sent_key(outbox_id: int) -> str:
    """The worker's Redis note that a row's message went out (app/services/messaging/worker.py)."""
    return f"outbox-sent:{outbox_id}"


def job_id(outbox_id: int, attempt: int = 0) -> str:
    """One arq job per outbox row and attempt: arq refuses a second job with the same id."""
    return f"outbox:{outbox_id}:{attempt}"


def queue_redis_settings() -> RedisSettings:
    """arq's Redis, always a single one: `ARQ_REDIS_URL` (default `REDIS_URL`), or its primary found
    through Sentinel with `redis+sentinel://[:password@]host:26379[,host:26379...]/<master>[/<db>]`."""
    url = get_settings().queue_redis_url
    if not url:
        return RedisSettings()
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return RedisSettings.from_dsn(url)
    master, _, database = parts.path.strip("/").partition("/")
    nodes = (node.rpartition(":") for node in parts.netloc.rpartition("@")[2].split(","))
    return RedisSettings(
        host=[(host, int(port)) for host, _, port in nodes],
        sentinel=True,
        sentinel_master=master,
        database=int(database or 0),
        password=unquote(parts.password) if parts.password else None,
    )


async def get_arq_pool() -> ArqRedis:
    global _pool
    if _pool is None:
        # Not the app's client: arq stores pickled bytes, the app's client decodes strings.
        settings, timeouts = queue_redis_settings(), {"socket_timeout": 1, "socket_connect_timeout": 1}
        if settings.sentinel:
            sentinel = Sentinel(settings.host, sentinel_kwargs=timeouts, **timeouts)
            # A pooled connection to a primary that failed over is retried once: the retry asks Sentinel anew.
            retry = {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}
            connection = {"db": settings.database, "password": settings.password, **retry}
            _pool = sentinel.master_for(settings.sentinel_master, redis_class=ArqRedis, **connection)
        else:
            _pool = ArqRedis.from_url(get_settings().queue_redis_url, **timeouts)
    return _pool


async def close_arq_pool() -> None:
    global _pool
    if _pool is not None:
        await _pool.aclose()
    _pool = None


async def dispatch(outbox_id: int) -> None:
    """Hand a committed row to the worker; if Redis is down, the worker's relay finds the row anyway."""
    pool = await get_arq_pool()
    await pool.enqueue_job(DELIVER_JOB, outbox_id, _job_id=job_id(outbox_id))


# `ArqRedis.enqueue_job` for several rows in one round trip: the same keys, the same pickled job,
# the same "a job id already queued or finished is not queued again" (atomic here as its WATCH
# and MULTI are there). KEYS: the queue, then each job's key and result key; ARGV: score,
# expiry (ms), then each job's id and serialized job.
_ENQUEUE = """
local queued = 0
for i = 1, (#KEYS - 1) / 2 do
    if redis.call('EXISTS', KEYS[2 * i], KEYS[2 * i + 1]) == 0 then
        redis.call('PSETEX', KEYS[2 * i], ARGV[2], ARGV[2 * i + 2])
        redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2 * i + 1])
        queued = queued + 1
    end
end
return queued
"""


def queue_redis_is_app_redis() -> bool:
    """Whether arq's queue lives on the app's own plain Redis (the default), so one pipeline reaches both."""
    settings = get_settings()
    return settings.queue_redis_url == settings.redis_url and not settings.redis_cluster


def enqueue_on(pipe: Any, outbox_ids: Sequence[int]) -> None:
    """`dispatch` for each row, as one command added to a pipeline of the queue's Redis (see
    `queue_redis_is_app_redis`) that the caller sends."""
    now_ms = timestamp_ms()
    keys, args = [default_queue_name], [now_ms, _JOB_EXPIRY_MS]
    for outbox_id in outbox_ids:
        job = job_id(outbox_id)
        keys += [job_key_prefix + job, result_key_prefix + job]
        args += [job, serialize_job(DELIVER_JOB, (outbox_id,), {}, None, now_ms)]
    pipe.eval(_ENQUEUE, len(keys), *keys, *args)


def redacted(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with its secret context entries blanked (a new dict, so the JSONB change is seen)."""
    secrets = payload.get("secret_keys") or []
    if not secrets:
        return payload
    context = {k: ("[redacted]" if k in secrets else v) for k, v in payload.get("context", {}).items()}
    return {**payload, "context": context}


async def forget_recipient(session: AsyncSession, email: str) -> None:
    """GDPR erasure: emails to this address keep only their template and locale, and those not yet
    sent never will be (the account is gone)."""
    unsent = OutboxMessage.sent_at.is_(None) & OutboxMessage.failed_at.is_(None)
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.kind == "email", OutboxMessage.payload["to"].astext == email)
        .values(
            payload=func.jsonb_build_object(
                "to",
                "[erased]",
                "template",
                OutboxMessage.payload["template"],
                "locale",
                OutboxMessage.payload["locale"],
                "context",
                func.jsonb_build_object(),
            ),
            failed_at=case((unsent, func.now()), else_=OutboxMessage.failed_at),
            last_error=case((unsent, "recipient erased"), else_=OutboxMessage.last_error),
        )
    )


class NotFailed(Conflict):
    code, title = "outbox_not_failed", "Only an email the worker gave up on can be retried"


async def retry_failed(session: AsyncSession, actor: User, outbox_id: int) -> None:
    """An admin sends a given-up email again: its attempts start over and the worker's relay picks it
    up within `OUTBOX_RELAY_SECONDS`, delivering it once like any other row."""
    retried = await session.scalar(
        update(OutboxMessage)
        .where(OutboxMessage.id == outbox_id, OutboxMessage.failed_at.is_not(None), OutboxMessage.sent_at.is_(None))
        .values(failed_at=None, attempts=0, next_attempt_at=func.now(), claimed_by=None, claimed_until=None)
        .returning(OutboxMessage.id)
    )
    if retried is None:
        raise NotFailed()
    await audit.record(session, actor_id=actor.id, action="outbox.retry", entity_type="outbox", entity_id=outbox_id)
