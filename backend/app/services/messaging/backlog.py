"""What the worker still owes, measured when `/metrics` is scraped: emails not yet delivered and
reminders due but not yet queued, with the age of the oldest of each.

Measured by the API rather than by the worker, so a dead worker shows as a growing backlog instead of
a missing scrape. Bounded: each count reads at most `COUNT_LIMIT` rows from its partial index
(`ix_outbox_pending`, `ix_reminders_due`), in order, so a huge backlog reads as `COUNT_LIMIT` and the
oldest row is still found; the statement may take `TIMEOUT_SECONDS`, and a scrape that cannot get
its figures in time answers without them (`c3po_backlog_up 0`).
"""

import asyncio

from loguru import logger
from sqlalchemy import func, select, text, true

from app.database import unit_of_work
from app.metrics import Backlog
from app.models import OutboxMessage, Reminder

COUNT_LIMIT = 10_000
TIMEOUT_SECONDS = 1.0


def _query():
    pending = (
        select(OutboxMessage.created_at)
        # Emails only: a webhook endpoint that is down retries for hours by design, and is watched by
        # `c3po_webhook_deliveries_total` instead of making the email backlog look stuck.
        .where(OutboxMessage.sent_at.is_(None), OutboxMessage.failed_at.is_(None), OutboxMessage.kind == "email")
        .order_by(OutboxMessage.next_attempt_at)
        .limit(COUNT_LIMIT)
        .subquery()
    )
    due = (
        select(Reminder.due_at)
        .where(Reminder.sent_at.is_(None), Reminder.due_at <= func.now())
        .order_by(Reminder.due_at)
        .limit(COUNT_LIMIT)
        .subquery()
    )
    outbox = select(func.count().label("pending"), func.min(pending.c.created_at).label("oldest"))
    outbox = outbox.select_from(pending).subquery()
    reminders = select(func.count().label("due"), func.min(due.c.due_at).label("oldest"))
    reminders = reminders.select_from(due).subquery()
    return select(
        func.now().label("now"),
        outbox.c.pending,
        outbox.c.oldest.label("oldest_email"),
        reminders.c.due,
        reminders.c.oldest.label("oldest_reminder"),
    ).select_from(outbox.join(reminders, true()))  # one row each


_QUERY = _query()


async def measure() -> Backlog | None:
    """The figures, or None when the database did not give them in time (the scrape goes on without)."""
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS * 2), unit_of_work() as session:
            await session.execute(text(f"SET LOCAL statement_timeout = {int(TIMEOUT_SECONDS * 1000)}"))
            row = (await session.execute(_QUERY)).one()
    except Exception as exc:  # down, slow or busy: /metrics still answers with everything else
        cause = getattr(exc, "orig", None) or exc  # not the SQL
        logger.warning("backlog not measured for /metrics: {}: {}", type(exc).__name__, cause)
        return None
    return Backlog(
        outbox_pending=row.pending,
        outbox_oldest_seconds=max((row.now - row.oldest_email).total_seconds(), 0.0) if row.oldest_email else 0.0,
        reminders_due=row.due,
        reminder_lag_seconds=max((row.now - row.oldest_reminder).total_seconds(), 0.0) if row.oldest_reminder else 0.0,
    )
