"""Retention: rows that have served their purpose are deleted by the worker's daily job.

Each purge deletes at most one batch per transaction (`RETENTION_BATCH_SIZE` rows), chosen by an
index on the column its age is counted from (oldest first) and locked `FOR UPDATE SKIP LOCKED`,
so two workers (or a worker and `python -m app purge`) share the work and never wait for, or
delete, each other's rows; it repeats until a batch comes back short. Settings (`RETENTION_*`, in
days; 0 keeps those rows for ever):

- sent emails (outbox rows: their content is personal data) `RETENTION_SENT_EMAIL_DAYS` after sending,
  emails given up `RETENTION_FAILED_EMAIL_DAYS` after that;
- action tokens (verification, reset, email change) `RETENTION_ACTION_TOKEN_DAYS` after use or expiry;
- sent reminders `RETENTION_REMINDER_DAYS` after sending, once their appointment has started;
- idempotency keys once they expire (24 h, `booking.idempotency.TTL`);
- audit entries `RETENTION_AUDIT_DAYS` after they were written;
- clients' accounts never verified `RETENTION_UNVERIFIED_ACCOUNT_DAYS` after sign-up: erased as
  `DELETE /users/me` erases (`accounts.erasure`), `ACCOUNT_BATCH` per transaction, so nothing they left
  (emails, audit entries, sessions) keeps their address.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from loguru import logger
from sqlalchemy import ColumnElement, Delete, Select, delete, func, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute

from app.config import Settings, get_settings
from app.database import unit_of_work
from app.models import ActionToken, AuditEntry, IdempotencyKey, OutboxMessage, Reminder, Role, User
from app.services.accounts import erasure
from app.services.booking import idempotency

ACCOUNT_BATCH = 20  # an erasure is heavier than a row: it sweeps every table for the address
IDEMPOTENCY_KEYS = "expired idempotency keys"


@dataclass(frozen=True)
class Purge:
    """Rows of one model whose `age` column is older than `keep` (None: kept for ever)."""

    name: str
    model: type
    age: InstrumentedAttribute
    keep: Callable[[Settings], timedelta | None]
    also: Callable[[], ColumnElement[bool]] | None = None  # a further condition on the rows

    def past(self) -> ColumnElement[bool]:
        """SQL: the row is past its retention (only while there is one)."""
        keep = self.keep(get_settings())
        assert keep is not None
        older = self.age < func.now() - keep
        return older if self.also is None else older & self.also()

    def chosen(self, batch: int) -> Select:
        """The next batch's rows (their `ctid`): an index scan on `age`, oldest first, skipping rows
        others hold. The lock taken keeps each row where it is until this transaction ends."""
        query = select(literal_column("ctid")).select_from(self.model).where(self.past())
        return query.order_by(self.age).limit(batch).with_for_update(skip_locked=True)

    def statement(self, batch: int) -> Delete:
        """`ctid = ANY(ARRAY(...))`: the batch is chosen first, then each row fetched by its address."""
        batch_rows = func.array(self.chosen(batch).scalar_subquery())
        return delete(self.model).where(literal_column("ctid") == func.any(batch_rows))


def _days(name: str) -> Callable[[Settings], timedelta | None]:
    def keep(settings: Settings) -> timedelta | None:
        days = getattr(settings, name)
        return timedelta(days=days) if days > 0 else None

    return keep


def _started() -> ColumnElement[bool]:
    """The reminder's appointment has started (so rescheduling it can never need the row again)."""
    return Reminder.due_at + func.make_interval(0, 0, 0, 0, 0, Reminder.offset_minutes) < func.now()


PURGES = (
    Purge("sent emails", OutboxMessage, OutboxMessage.sent_at, _days("retention_sent_email_days")),
    Purge("failed emails", OutboxMessage, OutboxMessage.failed_at, _days("retention_failed_email_days")),
    Purge("used action tokens", ActionToken, ActionToken.used_at, _days("retention_action_token_days")),
    Purge("expired action tokens", ActionToken, ActionToken.expires_at, _days("retention_action_token_days")),
    Purge("sent reminders", Reminder, Reminder.sent_at, _days("retention_reminder_days"), also=_started),
    Purge(IDEMPOTENCY_KEYS, IdempotencyKey, IdempotencyKey.created_at, lambda _: idempotency.TTL),
    Purge("audit entries", AuditEntry, AuditEntry.created_at, _days("retention_audit_days")),
)


def _batch_size(batch: int | None) -> int:
    return batch or get_settings().retention_batch_size


async def purge_batch(purge: Purge, batch: int | None = None) -> int:
    """Delete one batch of `purge`'s rows in one transaction; how many went."""
    if purge.keep(get_settings()) is None:
        return 0
    async with unit_of_work() as session:
        result = await session.execute(purge.statement(_batch_size(batch)))
    return result.rowcount  # type: ignore[attr-defined]


def unverified_accounts(batch: int) -> Select:
    """Clients who never verified their address, signed up longer ago than the setting allows."""
    keep = _days("retention_unverified_account_days")(get_settings())
    assert keep is not None
    return (
        select(User)
        .where(
            User.email_verified_at.is_(None),
            User.deleted_at.is_(None),
            User.role == Role.user.value,
            User.created_at < func.now() - keep,
        )
        .order_by(User.created_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )


async def erase_unverified_batch(batch: int = ACCOUNT_BATCH) -> list[uuid.UUID]:
    """Erase one batch of never-verified accounts in one transaction; their ids."""
    if _days("retention_unverified_account_days")(get_settings()) is None:
        return []
    async with unit_of_work() as session:
        users = list(await session.scalars(unverified_accounts(batch)))
        for user in users:
            await erasure.erase(session, user)
    return [user.id for user in users]


async def purge_all(batch: int | None = None, account_batch: int = ACCOUNT_BATCH) -> dict[str, int]:
    """Every purge to the end, batch after batch; how many rows (accounts) each removed."""
    size = _batch_size(batch)
    counts: dict[str, int] = {}
    for each in PURGES:
        counts[each.name] = await purge(each.name, size)
    counts["unverified accounts"] = 0
    while True:
        erased = await erase_unverified_batch(account_batch)
        counts["unverified accounts"] += len(erased)
        if len(erased) < account_batch:
            break
    return counts


async def purge(name: str, batch: int | None = None) -> int:
    """One purge (by its name in `PURGES`) to the end."""
    size = _batch_size(batch)
    (chosen,) = (p for p in PURGES if p.name == name)
    total = 0
    while (deleted := await purge_batch(chosen, size)) == size:
        total += deleted
    return total + deleted


async def purge_expired_idempotency_keys(ctx: dict[str, Any]) -> int:
    """The worker's ten-minute cron job: keys live 24 h, the table stays small."""
    purged = await purge(IDEMPOTENCY_KEYS)
    if purged:
        logger.info("purged {} expired idempotency keys", purged)
    return purged


async def purge_retained(ctx: dict[str, Any]) -> dict[str, int]:
    """The worker's daily cron job."""
    counts = await purge_all()
    logger.info("retention: {}", ", ".join(f"{count} {name}" for name, count in counts.items()))
    return counts
