"""Write side effects into the outbox inside the caller's transaction; hand them over after commit."""

from typing import Any

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.models import OutboxMessage

DELIVER_JOB = "deliver_outbox"
_pool: ArqRedis | None = None


async def queue_email(
    session: AsyncSession, *, to: str, template: str, locale: str, context: dict[str, Any]
) -> OutboxMessage:
    """Queue `templates/email/{locale}/{template}.{html,txt}` for `to`; it leaves only if the transaction commits."""
    message = OutboxMessage(
        kind="email", payload={"to": to, "template": template, "locale": locale, "context": context}
    )
    session.add(message)
    await session.flush()
    session.info.setdefault("outbox_ids", []).append(message.id)
    return message


def job_id(outbox_id: int, attempt: int = 0) -> str:
    """One arq job per outbox row and attempt: arq refuses a second job with the same id."""
    return f"outbox:{outbox_id}:{attempt}"


async def get_arq_pool() -> ArqRedis:
    global _pool
    if _pool is None:
        # Not the app's client: arq stores pickled bytes, the app's client decodes strings.
        _pool = ArqRedis.from_url(get_settings().redis_url, socket_timeout=2, socket_connect_timeout=2)
    return _pool


async def close_arq_pool() -> None:
    global _pool
    if _pool is not None:
        await _pool.aclose()
    _pool = None


async def dispatch_after_commit(outbox_ids: list[int]) -> None:
    pool = await get_arq_pool()
    for outbox_id in outbox_ids:
        await pool.enqueue_job(DELIVER_JOB, outbox_id, _job_id=job_id(outbox_id))
