"""Real-time events: published to a Redis channel per user after commit; every API process relays
them to the WebSockets it holds.

Each process keeps one Redis pub/sub connection (`Hub`): it subscribes to a user's channel when the
first socket of that user connects here and unsubscribes when the last one goes, so a thousand
sockets cost one connection, and a process hears only about the users it serves. Pub/sub keeps
nothing: a socket that was not connected misses the event, and clients refetch on reconnect.

Events travel over `REDIS_PUBSUB_URL` (by default `REDIS_URL`), always a plain connection: on a
Redis Cluster any node will do, since the cluster forwards every PUBLISH to all of its nodes.
"""

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

from loguru import logger
from pydantic_core import to_jsonable_python
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.database import after_commit
from app.redis import get_pubsub_redis

CHANNEL_PREFIX = "events:user:"
QUEUE_SIZE = 256  # events waiting for one slow socket; beyond that the oldest are dropped
SUBSCRIBE_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 5  # how often the reader wakes (and pings Redis to notice a dead connection)


def channel(user_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{user_id}"


def encode(event_type: str, data: dict[str, Any]) -> str:
    return json.dumps({"type": event_type, "data": to_jsonable_python(data)}, separators=(",", ":"))


def publish_after_commit(
    session: AsyncSession, user_ids: list[uuid.UUID], event_type: str, data: dict[str, Any]
) -> None:
    """Send `{"type": event_type, "data": data}` to each user's sockets once the transaction commits."""
    message = encode(event_type, data)
    pending = session.info.get("events")
    if pending is None:
        # One action per transaction publishes everything it produced in one pipelined round trip.
        pending = session.info["events"] = []
        after_commit(session, partial(_publish_all, session.info))
    pending.extend((user_id, message) for user_id in dict.fromkeys(user_ids))  # once per user, in order


async def _publish_all(info: dict[str, Any]) -> None:
    messages = info.pop("events", [])
    async with get_pubsub_redis().pipeline(transaction=False) as pipe:
        publish_on(pipe, messages)
        await pipe.execute()


def publish_on(pipe: Pipeline, messages: list[tuple[uuid.UUID, str]]) -> None:
    """PUBLISH each `(user_id, encoded event)`, added to a pipeline of `get_pubsub_redis()` that the caller sends."""
    for user_id, message in messages:
        pipe.publish(channel(user_id), message)


async def publish(user_id: uuid.UUID | str, message: str) -> None:
    await get_pubsub_redis().publish(channel(user_id), message)


SESSION_ENDED = "session.ended"
SESSION_ENDED_PREFIX = '{"type":"' + SESSION_ENDED + '"'


async def end_sessions(user_id: uuid.UUID, *, session_id: str | None = None, keep: str | None = None) -> None:
    """Tell every process to close this user's sockets of one session (`session_id`), or of all but `keep`.

    Best effort: a socket that misses it is still refused at its next heartbeat check.
    """
    message = encode(SESSION_ENDED, {"session_id": session_id, "keep_session_id": keep})
    try:
        await publish(user_id, message)
    except (RedisError, OSError):
        logger.opt(exception=True).warning("could not announce the end of sessions of {}", user_id)


def ends_session(message: str, session_id: str) -> bool | None:
    """For a socket of `session_id`: None if `message` is an ordinary event, else whether it ends the socket."""
    if not message.startswith(SESSION_ENDED_PREFIX):
        return None
    data = json.loads(message)["data"]
    if data["session_id"] is not None:
        return data["session_id"] == session_id
    return data["keep_session_id"] != session_id


class Hub:
    """One pub/sub connection per process, fanning each user's channel out to that user's local sockets."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub = redis.pubsub()
        self._listeners: dict[str, set[asyncio.Queue[str]]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def channels(self) -> set[str]:
        """The channels this process listens to now (for tests and metrics)."""
        return set(self._listeners)

    @asynccontextmanager
    async def subscription(self, user_id: uuid.UUID) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of this user's events (JSON text), live once entered; unsubscribed on exit."""
        name = channel(user_id)
        queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        async with self._lock:
            listeners = self._listeners.setdefault(name, set())
            listeners.add(queue)
            confirmation = self._confirmations.get(name)
            if len(listeners) == 1:
                self._confirmations[name] = confirmation = asyncio.get_running_loop().create_future()
                try:
                    await self._pubsub.subscribe(name)
                except BaseException:
                    await self._forget(name, queue)
                    raise
                self._ensure_reader()
        try:
            if confirmation is not None:
                await asyncio.wait_for(asyncio.shield(confirmation), SUBSCRIBE_TIMEOUT_SECONDS)
            yield queue
        finally:
            async with self._lock:
                await self._forget(name, queue)

    async def _forget(self, name: str, queue: asyncio.Queue[str]) -> None:
        listeners = self._listeners.get(name, set())
        listeners.discard(queue)
        if listeners:
            return
        self._listeners.pop(name, None)
        self._confirmations.pop(name, None)
        with suppress(RedisError, OSError):  # connection gone: nothing to unsubscribe from
            await self._pubsub.unsubscribe(name)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="events-hub-reader")

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(timeout=READ_TIMEOUT_SECONDS)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: keep trying; redis-py subscribes again on reconnect
                failures += 1
                logger.opt(exception=failures == 1).warning("event hub lost Redis; retrying")
                await asyncio.sleep(min(0.1 * 2**failures, 5))
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        name = name.decode() if isinstance(name, bytes) else name
        if message["type"] == "subscribe":
            confirmation = self._confirmations.get(name)
            if confirmation is not None and not confirmation.done():
                confirmation.set_result(None)
            return
        if message["type"] != "message":
            return
        if name not in self._listeners:  # left over from an unsubscribe lost with the connection
            task = asyncio.create_task(self._drop_orphan(name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        data = message["data"]
        text = data.decode() if isinstance(data, bytes) else data
        for queue in self._listeners[name]:
            if queue.full():
                queue.get_nowait()
                logger.warning("a slow socket on {} dropped an event", name)
            queue.put_nowait(text)

    async def _drop_orphan(self, name: str) -> None:
        async with self._lock:
            if name not in self._listeners:
                with suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(name)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await self._reader
        with suppress(RedisError, OSError):
            await self._pubsub.aclose()
        await self._redis.aclose()


_hub: Hub | None = None


def get_hub() -> Hub:
    global _hub
    if _hub is None:
        url = get_settings().pubsub_redis_url
        if not url:
            raise RuntimeError("REDIS_URL is not set")
        # Its own client: no socket timeout (the connection waits for events), a ping every 30 s, and
        # a name that `CLIENT LIST` shows.
        redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=get_settings().redis_timeout_seconds,
            health_check_interval=30,
            client_name=f"c3po-events-{os.getpid()}",
        )
        _hub = Hub(redis)
    return _hub


async def close_hub() -> None:
    global _hub
    if _hub is not None:
        await _hub.close()
    _hub = None
