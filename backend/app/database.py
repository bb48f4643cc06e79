"""Async engine and the per-request session: one transaction per unit of work."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import get_settings

AFTER_COMMIT_SECONDS = 2.0
_engine: AsyncEngine | None = None
_sessionmaker: async_sessionmaker[AsyncSession] | None = None


def to_async_url(url: str) -> str:
    """`postgresql://` (as embedded servers and most hosts hand it out) -> the asyncpg dialect."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def get_engine() -> AsyncEngine:
    global _engine, _sessionmaker
    if _engine is None:
        settings = get_settings()
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set (use `python -m app dev` for embedded servers)")
        _engine = create_async_engine(
            to_async_url(settings.database_url),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_pre_ping=True,
            pool_timeout=settings.db_pool_timeout_seconds,
            connect_args={"timeout": 5, "server_settings": {"application_name": "c3po"}},
        )
        _sessionmaker = async_sessionmaker(_engine, expire_on_commit=False)
    return _engine


def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


async def dispose_engine() -> None:
    global _engine, _sessionmaker
    if _engine is not None:
        await _engine.dispose()
    _engine = _sessionmaker = None


def after_commit(session: AsyncSession, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action` once this session's transaction has committed (never after a rollback)."""
    session.info.setdefault("after_commit", []).append(action)


@asynccontextmanager
async def unit_of_work() -> AsyncIterator[AsyncSession]:
    """Open a session, commit once at the end (roll back on any error), then release side effects.

    Services only `flush()`; what they register with `after_commit` (handing outbox rows to the
    worker, invalidating caches, publishing events) runs only once the data is really there.
    """
    async with get_sessionmaker()() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        actions = session.info.pop("after_commit", [])
    if actions:
        await _run_after_commit(actions)


async def _run_after_commit(actions: list[Callable[[], Awaitable[None]]]) -> None:
    """Best effort, side by side, and bounded: each action has a fallback (the outbox relay, cache
    expiry), so a Redis outage must not hold an already-committed answer back for long."""
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(action() for action in actions), return_exceptions=True), AFTER_COMMIT_SECONDS
        )
    except TimeoutError:
        logger.warning("after-commit actions timed out after {}s", AFTER_COMMIT_SECONDS)
        return
    for result in results:
        if isinstance(result, Exception):
            logger.opt(exception=result).warning("an after-commit action failed")


async def get_session() -> AsyncIterator[AsyncSession]:
    async with unit_of_work() as session:
        yield session
