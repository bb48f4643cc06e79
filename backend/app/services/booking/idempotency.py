"""`Idempotency-Key` for appointment writes: the same request twice does the work once.

Redis keeps `(user, key) -> {fingerprint, state, status, body}`. The first request claims the key
(`SET NX`, state `pending`, short TTL); a duplicate that arrives meanwhile polls until the first
answer is stored, then replays it. The answer is stored (24 h) only once the transaction has
committed, so a rolled-back request never leaves an answer behind; a failed request releases the
key, so the client may try again with it.
"""

import asyncio
import hashlib
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from app.database import after_commit
from app.errors import IdempotencyKeyInProgress, IdempotencyKeyReused
from app.redis import get_redis

ANSWER_TTL_SECONDS = 24 * 3600
PENDING_TTL_SECONDS = 30  # a request that died without releasing its claim blocks the key this long at most
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    replayed: bool = False


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The request as a hash; JSON bodies are canonicalised so key order and spacing do not matter."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except ValueError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def redis_key(user_id: uuid.UUID, key: str) -> str:
    return f"idempotency:{user_id}:{hashlib.sha256(key.encode()).hexdigest()}"


async def _release(name: str, claim: str) -> None:
    try:
        await get_redis().eval(_RELEASE, 1, name, claim)
    except (RedisError, OSError):
        logger.warning("could not release idempotency key {}; it expires in {}s", name, PENDING_TTL_SECONDS)


def _release_on_rollback(session: AsyncSession, name: str, claim: str) -> None:
    """A transaction that rolls back after the work succeeded (say, the commit fails) frees the key too."""

    def released(_session: Any, previous: Any) -> None:
        if previous.nested or not pending:
            return  # a SAVEPOINT, or released already
        pending.clear()
        task = asyncio.get_running_loop().create_task(_release(name, claim))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    pending = [True]
    event.listen(session.sync_session, "after_soft_rollback", released)


_tasks: set[asyncio.Task] = set()


async def _claim_or_wait(name: str, print_: str, claim: str) -> Answer | None:
    """None once we hold the key; the stored answer when the same request already ran."""
    redis = get_redis()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while True:
        if await redis.set(name, claim, nx=True, ex=PENDING_TTL_SECONDS):
            return None
        raw = await redis.get(name)
        if raw is None:
            continue  # released or expired between the two calls: try to claim it again
        stored = json.loads(raw)
        if stored["fingerprint"] != print_:
            raise IdempotencyKeyReused("This Idempotency-Key was already used with a different request")
        if stored["state"] == "done":
            return Answer(stored["status"], stored["body"], replayed=True)
        if loop.time() >= deadline:
            raise IdempotencyKeyInProgress(headers={"Retry-After": "1"})
        await asyncio.sleep(POLL_SECONDS)


async def run(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    key: str | None,
    request_fingerprint: str,
    status: int,
    operation: Callable[[], Awaitable[Any]],
) -> Answer:
    """Do `operation` (which answers a JSON-ready body) once per (user, key, request)."""
    if key is None:
        return Answer(status, await operation())
    name = redis_key(user_id, key)
    claim = json.dumps({"fingerprint": request_fingerprint, "state": "pending", "claim": secrets.token_hex(8)})
    replay = await _claim_or_wait(name, request_fingerprint, claim)
    if replay is not None:
        return replay
    try:
        body = await operation()
    except BaseException:
        await _release(name, claim)
        raise
    done = json.dumps({"fingerprint": request_fingerprint, "state": "done", "status": status, "body": body})

    async def store() -> None:
        await get_redis().set(name, done, ex=ANSWER_TTL_SECONDS)

    after_commit(session, store)
    await session.connection()  # in a transaction, so its rollback is seen even if nothing was written
    _release_on_rollback(session, name, claim)
    return Answer(status, body)


async def forget_user(user_id: uuid.UUID) -> None:
    """GDPR erasure: the stored answers of the user's requests (appointments, notes included) go now,
    not in 24 h. Best effort after the commit; they expire anyway."""
    redis = get_redis()
    try:
        names = [name async for name in redis.scan_iter(match=f"idempotency:{user_id}:*", count=1000)]
        if names:
            await redis.delete(*names)
    except (RedisError, OSError):
        logger.warning("could not forget the idempotency answers of {}; they expire within 24 h", user_id)
