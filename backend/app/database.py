"""Async engine and the per-request session: one transaction per unit of work."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import get_settings

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
            pool_timeout=5,
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


@asynccontextmanager
async def unit_of_work() -> AsyncIterator[AsyncSession]:
    """Open a session, commit once at the end (roll back on any error), then release side effects.

    Services only `flush()`; outbox rows they add are handed to the worker after the commit,
    so nothing leaves for a change that was rolled back.
    """
    from app.services.outbox import dispatch_after_commit

    async with get_sessionmaker()() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
        pending = session.info.pop("outbox_ids", [])
    if pending:
        try:
            await dispatch_after_commit(pending)
        except Exception:  # the worker's relay picks the rows up; the request must not fail for this
            logger.opt(exception=True).warning("outbox hand-off failed; the relay will deliver {}", pending)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with unit_of_work() as session:
        yield session
