"""`Idempotency-Key` for appointment writes (Stripe's semantics): the same request twice does the work once.

PostgreSQL keeps `(user, key) -> fingerprint, status, answer` (`idempotency_keys`), written in the
request's own transaction, so the answer exists exactly when the change does: a crash right after
the commit, a lost answer or a Redis outage cannot make a retry book twice.

1. `INSERT ... ON CONFLICT` claims the key. A duplicate whose first is still running blocks on the
   primary key until that transaction ends (READ COMMITTED): if the first committed, the insert
   does nothing and the next statement (a fresh snapshot) reads its answer; if it rolled back, the
   insert goes through and the duplicate does the work itself. It waits `WAIT_SECONDS` at most
   (`lock_timeout`), then gets 409 `idempotency_key_in_progress`, which is not stored.
2. The change runs in a SAVEPOINT; its answer is written to the row (`done`) before the request's
   single commit. The row is never committed `in_progress`.
3. Once the change has started, its answer is the answer (as at Stripe): a 4xx the service raised is
   stored and replayed, the savepoint having undone whatever the change did. Not stored: 5xx and
   unexpected errors (everything rolls back, the key is free again), 429, and the key's own errors.
4. A key lives `TTL`; an older row counts as absent, and the worker deletes them in batches
   (`services.retention`).
"""

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import driver_connection, raw_execute, raw_fetchrow
from app.errors import AppError, IdempotencyKeyInProgress, IdempotencyKeyReused, RateLimited
from app.models.idempotency import DONE, IN_PROGRESS, IdempotencyKey
from app.services.booking import paths

TTL = timedelta(hours=24)
WAIT_SECONDS = 10.0
_LOCK_NOT_AVAILABLE = "55P03"
_NOT_STORED = (IdempotencyKeyInProgress, IdempotencyKeyReused, RateLimited)


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The request as a hash; JSON bodies are canonicalised so key order and spacing do not matter."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


_TABLE = IdempotencyKey.__table__


# One round trip. `wait` raises `lock_timeout` before the insert (its row feeds the insert), and the
# outer target list restores it only once `claim` has finished (an aggregate over its rows).
# Raw SQL ($n parameters) run on the session's asyncpg connection: this is on every keyed write.
# `_CLAIM_TRYING_LOCK` also tries the shared advisory lock $6/$7 once the claim is done: a try never
# waits (so `lock_timeout` plays no part), and fails where a holder or waiter conflicts with it. It
# does not even try (NULL) when the booking of service $8 with staff member $9 takes the full path
# (`paths`), whose locks come in another order.
_CLAIM = f"""
    WITH wait AS (
        SELECT current_setting('lock_timeout') AS previous, set_config('lock_timeout', $1, true) AS waiting
    ), claim AS (
        INSERT INTO {_TABLE.name} AS k (user_id, key, fingerprint, status, response_status, response_body, created_at)
        SELECT $2, $3, $4, '{IN_PROGRESS}', NULL, NULL, now() FROM wait
        ON CONFLICT (user_id, key) DO UPDATE
        SET fingerprint = excluded.fingerprint, status = excluded.status, response_status = NULL,
            response_body = NULL, created_at = now()
        WHERE k.created_at < now() - make_interval(secs => $5)
        RETURNING 1
    )
    SELECT claimed.n > 0, set_config('lock_timeout', wait.previous, true){{lock}}
    FROM wait, (SELECT count(*) AS n FROM claim) AS claimed
    """
_CLAIM_TRYING_LOCK = _CLAIM.format(
    lock=f", CASE WHEN {paths.full_path_sql('$8', '$9')} THEN NULL ELSE pg_try_advisory_xact_lock_shared($6, $7) END"
)
_CLAIM = _CLAIM.format(lock="")
_FINISH = (
    f"UPDATE {_TABLE.name} SET status = '{DONE}', response_status = $3, response_body = $4::json"
    " WHERE user_id = $1 AND key = $2"
)


@dataclass(frozen=True)
class TryLock:
    """A booking's calendar lock to try along with the claim: the shared advisory lock (class, key),
    unless booking `service_id` with `staff_id` takes the full path (`paths`)."""

    lock_class: int
    lock_key: int
    service_id: uuid.UUID
    staff_id: uuid.UUID


async def claim(
    session: AsyncSession, user_id: uuid.UUID, key: str, print_: str, *, try_lock: TryLock | None = None
) -> tuple[bool, bool | None]:
    """(claimed, locked): claimed once this transaction holds the key (new, or expired and taken
    over), not if a fresh row exists, committed by now (we waited for its transaction if it was still
    running); locked if `try_lock`'s lock was free and is now held, None if it was not tried because
    the booking takes the full path."""
    connection = await driver_connection(session)
    wait = f"{int(WAIT_SECONDS * 1000)}ms"
    args: tuple[object, ...] = (wait, user_id, key, print_, TTL.total_seconds())
    try:
        if try_lock is None:
            row = await raw_fetchrow(connection, _CLAIM, *args)
        else:
            lock = (try_lock.lock_class, try_lock.lock_key, try_lock.service_id, try_lock.staff_id)
            row = await raw_fetchrow(connection, _CLAIM_TRYING_LOCK, *args, *lock)
    except DBAPIError as exc:
        if _sqlstate(exc) == _LOCK_NOT_AVAILABLE:
            raise IdempotencyKeyInProgress(headers={"Retry-After": "1"}) from exc
        raise
    assert row is not None
    if try_lock is None:
        return bool(row[0]), False
    return bool(row[0]), None if row[2] is None else bool(row[2])


async def stored(session: AsyncSession, user_id: uuid.UUID, key: str, print_: str) -> Answer | None:
    """The committed answer of a key someone else claimed (None if it was purged meanwhile)."""
    row = await session.get(IdempotencyKey, (user_id, key), populate_existing=True)
    if row is None:
        return None  # purged since our claim looked: claim it again
    if row.fingerprint != print_:
        raise IdempotencyKeyReused("This Idempotency-Key was already used with a different request")
    if row.status != DONE:  # never committed so; kept as a guard
        raise IdempotencyKeyInProgress(headers={"Retry-After": "1"})
    return Answer(row.response_status or 200, row.response_body, replayed=True)


async def claim_or_replay(
    session: AsyncSession, user_id: uuid.UUID, key: str, print_: str, *, try_lock: TryLock | None = None
) -> tuple[Answer | None, bool | None]:
    """Hold the key (None: go on and do the work), or the answer the key already has; and whether
    `try_lock` (see `claim`) is held (None: the booking takes the full path)."""
    locked: bool | None = False
    for _ in range(3):
        claimed, got = await claim(session, user_id, key, print_, try_lock=try_lock if locked is False else None)
        locked = got if locked is False else locked
        if claimed:
            return None, locked
        replay = await stored(session, user_id, key, print_)
        if replay is not None:
            return replay, locked
    raise IdempotencyKeyInProgress(headers={"Retry-After": "1"})


async def finish(session: AsyncSession, user_id: uuid.UUID, key: str, answer: Answer) -> None:
    """Store the answer on the claimed row (`answer_sql` does the same inside a bigger statement)."""
    connection = await driver_connection(session)
    await raw_execute(connection, _FINISH, user_id, key, answer.status, json.dumps(answer.body))


def storable(exc: AppError) -> bool:
    """Whether a refusal becomes the key's answer (4xx the change raised; not 429 or the key's own)."""
    return 400 <= exc.status < 500 and not isinstance(exc, _NOT_STORED)


async def run(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    key: str | None,
    request_fingerprint: str,
    status: int,
    operation: Callable[[], Awaitable[Any]],
    error_body: Callable[[AppError], Any] | None = None,
) -> Answer:
    """Do `operation` (which answers a JSON-ready body) once per (user, key, request).

    With `error_body`, a 4xx `AppError` the operation raises becomes the stored answer (rendered by
    it) instead of propagating; without, it propagates and nothing is stored."""
    if key is None:
        return Answer(status, await operation())
    replay, _ = await claim_or_replay(session, user_id, key, request_fingerprint)
    if replay is not None:
        return replay
    return await run_claimed(session, user_id, key, status, operation, error_body)


async def run_claimed(
    session: AsyncSession,
    user_id: uuid.UUID,
    key: str,
    status: int,
    operation: Callable[[], Awaitable[Any]],
    error_body: Callable[[AppError], Any] | None = None,
) -> Answer:
    """`run` for a key this transaction has already claimed."""
    info = {name: list(value) if isinstance(value, list) else value for name, value in session.info.items()}
    try:
        async with session.begin_nested():
            answer = Answer(status, await operation())
    except AppError as exc:
        if error_body is None or not storable(exc):
            raise
        # The savepoint undid the change; drop the side effects it had lined up for after the commit.
        session.info.clear()
        session.info.update(info)
        answer = Answer(exc.status, error_body(exc), headers=exc.headers)
    await finish(session, user_id, key, answer)
    return answer


async def forget_user(session: AsyncSession, user_id: uuid.UUID) -> None:
    """GDPR erasure: the stored answers of the user's requests (appointments, notes included) go with it."""
    await session.execute(delete(IdempotencyKey).where(IdempotencyKey.user_id == user_id))
