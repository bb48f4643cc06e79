"""Async engine and the per-request session: one transaction per unit of work."""

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from loguru import logger
from sqlalchemy import event, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import Settings, get_settings
from app.errors import ServerBusy
from app.read_pool import ReadPool

AFTER_COMMIT_SECONDS = 2.0
_engine: AsyncEngine | None = None
_sessionmaker: async_sessionmaker[AsyncSession] | None = None
_role = "api"


class StatementTimeout(DBAPIError):
    """SQLSTATE 57014: a statement ran past `statement_timeout` (or was cancelled by an operator)."""


class LockTimeout(DBAPIError):
    """SQLSTATE 55P03: a lock was not granted within `lock_timeout` (or `NOWAIT`)."""


class TransactionRollback(DBAPIError):
    """SQLSTATE 40P01 / 40001: PostgreSQL broke a deadlock, or a serializable transaction lost a race,
    by rolling this transaction back. Nothing of it was committed; running it again is safe."""


_TYPED: dict[str, type[DBAPIError]] = {
    "57014": StatementTimeout,
    "55P03": LockTimeout,
    "40P01": TransactionRollback,
    "40001": TransactionRollback,
}


def to_async_url(url: str) -> str:
    """`postgresql://` (as embedded servers and most hosts hand it out) -> the asyncpg dialect."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def set_role(role: str) -> None:
    """Name this process in `pg_stat_activity.application_name` (`c3po-api/1234`, `c3po-worker/5678`)."""
    global _role
    _role = role


def server_settings(settings: Settings) -> dict[str, str]:
    """What every pooled connection is opened with (asyncpg `server_settings`): its name and timeouts."""

    def ms(seconds: float) -> str:
        return f"{round(seconds * 1000)}ms"

    return {
        "application_name": f"c3po-{_role}/{os.getpid()}",
        "statement_timeout": ms(settings.db_statement_timeout_seconds),
        "lock_timeout": ms(settings.db_lock_timeout_seconds),
        "idle_in_transaction_session_timeout": ms(settings.db_idle_in_transaction_timeout_seconds),
    }


def _typed_errors(context: ExceptionContext) -> DBAPIError | None:
    """Raise a timeout or a rollback as `StatementTimeout` / `LockTimeout` / `TransactionRollback`:
    still a DBAPIError with its `orig`, so code catching DBAPIError is unaffected, and the problem
    handler can tell them apart by class."""
    error = context.sqlalchemy_exception
    if not isinstance(error, DBAPIError) or type(error) is not DBAPIError:
        return None
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    typed = _TYPED.get(str(sqlstate))
    if typed is None:
        return None
    return typed(
        error.statement,
        error.params,
        orig,  # type: ignore[arg-type]
        hide_parameters=error.hide_parameters,
        connection_invalidated=error.connection_invalidated,
    )


def _ping(dbapi_connection: Any) -> bool:
    """`pool_pre_ping` in one round trip (an empty statement) instead of the asyncpg adapter's three
    (BEGIN, the statement, ROLLBACK). False for a connection the server has ended (a restart): the
    pool then replaces it and every connection older than it, as with the adapter's own ping."""
    try:
        dbapi_connection.run_async(lambda connection: connection.fetchrow(";"))
    except Exception as exc:
        if _is_loss(exc, dbapi_connection.driver_connection):
            return False
        raise
    return True


def get_engine() -> AsyncEngine:
    global _engine, _sessionmaker
    if _engine is None:
        settings = get_settings()
        if not settings.database_url:
            raise RuntimeError("DATABASE_URL is not set (use `python -m app dev` for embedded servers)")
        _engine = create_async_engine(
            to_async_url(settings.database_url),
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_pre_ping=True,
            pool_timeout=settings.db_pool_timeout_seconds,
            connect_args={"timeout": 5, "server_settings": server_settings(settings)},
        )
        event.listen(_engine.sync_engine, "handle_error", _typed_errors, retval=True)
        _engine.dialect.do_ping = _ping  # type: ignore[method-assign]
        _sessionmaker = async_sessionmaker(_engine, expire_on_commit=False)
    return _engine


def get_sessionmaker() -> async_sessionmaker[AsyncSession]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


async def dispose_engine() -> None:
    global _engine, _sessionmaker, _read_pool
    if _engine is not None:
        await _engine.dispose()
    if _read_pool is not None:
        await _read_pool.close()
    _engine = _sessionmaker = _read_pool = None


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


# The hot read path (`fetch_row`) has its own few asyncpg connections: no SQLAlchemy checkout, so no
# pre-ping round trips and no overflow connections opened and closed under load. Counted against
# `max_connections` like the engine's pool (see backend/README.md).
READ_POOL_SIZE = 10
READ_POOL_APPLICATION_NAME = "c3po-read"  # how its connections show in pg_stat_activity
_read_pool: ReadPool | None = None
_LOST = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


def _get_read_pool() -> ReadPool:
    global _read_pool
    if _read_pool is None:
        settings = get_settings()
        url = make_url(to_async_url(settings.database_url or "")).set(drivername="postgresql")
        _read_pool = ReadPool(
            url.render_as_string(hide_password=False),
            size=READ_POOL_SIZE,
            timeout=settings.db_pool_timeout_seconds,
            # The same timeouts as the engine's connections; its own name.
            server_settings=server_settings(settings) | {"application_name": READ_POOL_APPLICATION_NAME},
        )
    return _read_pool


class _ConnectionLost(Exception):
    pass


def _is_loss(exc: BaseException, connection: asyncpg.Connection | None) -> bool:
    """A dead or unusable connection (the server restarted or ended it), not a failed statement."""
    sqlstate = str(getattr(exc, "sqlstate", ""))
    return (
        isinstance(exc, _LOST)
        or sqlstate.startswith(("08", "57P"))  # connection exception, operator intervention (shutdown)
        or (connection is not None and connection.is_closed())
    )


async def _fetch_once(sql: str, args: tuple[object, ...], *, many: bool) -> Any:
    pool, connection = _get_read_pool(), None
    try:
        try:
            connection = await pool.acquire()  # may connect: the server may be down
        except ServerBusy as exc:  # every read connection busy: the same answer as the engine's pool
            raise PoolTimeout("the read pool has no free connection") from exc
        reusable = False
        try:
            result = await (connection.fetch(sql, *args) if many else connection.fetchrow(sql, *args))
            reusable = True
            return result
        except asyncpg.PostgresError as exc:
            reusable = not _is_loss(exc, connection)  # a failed statement leaves the connection usable
            raise
        finally:
            pool.release(connection, reusable=reusable)  # else closed: never handed out again
    except Exception as exc:
        if not _is_loss(exc, connection):
            raise
        pool.expire()  # the others predate the loss too: reconnect them on next use
        raise _ConnectionLost from exc


async def fetch_row(sql: str, *args: object) -> asyncpg.Record | None:
    """One row of one read-only statement (`$1` placeholders), outside any transaction.

    For the hottest read (the caller's row on every authenticated read): one round trip on the read
    pool, asyncpg's prepared statement, no SQL compilation, no BEGIN/COMMIT. A connection found dead
    (the server restarted) is replaced and the read tried once more; errors leave as `DBAPIError`,
    so the problem handlers answer them like any other database error.
    """
    return await _fetch(sql, args, many=False)


async def fetch_rows(sql: str, *args: object) -> list[asyncpg.Record]:
    """Every row of one read-only statement, the way `fetch_row` reads one (for the public
    availability reads: no BEGIN/COMMIT, no ORM, each statement its own READ COMMITTED snapshot)."""
    return await _fetch(sql, args, many=True)


async def _fetch(sql: str, args: tuple[object, ...], *, many: bool) -> Any:
    for attempt in (1, 2):
        try:
            return await _fetch_once(sql, args, many=many)
        except _ConnectionLost as lost:
            if attempt == 2:
                raise DBAPIError(sql, args, lost.__cause__, connection_invalidated=True) from lost.__cause__
        except asyncpg.PostgresError as exc:
            raise _TYPED.get(str(exc.sqlstate), DBAPIError)(sql, args, exc) from exc
    raise AssertionError("unreachable")


_DRIVER = "driver_connection"  # session.info: (the transaction, its asyncpg connection)


async def driver_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under the session, in its transaction (begun if need be): for hot
    paths that run a few fixed statements without SQLAlchemy's per-statement cost. Run them through
    `raw_fetchrow`/`raw_execute`, so errors leave as `DBAPIError` like the ORM's."""
    transaction = session.sync_session.get_transaction()
    held = session.info.get(_DRIVER)
    if held is not None and transaction is not None and held[0] is transaction:
        return held[1]
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    adapter = raw.dbapi_connection  # SQLAlchemy's asyncpg adapter, which sends BEGIN lazily, with the
    if adapter._transaction is None:  # first statement it runs itself: a raw one first would autocommit
        await adapter._start_transaction()
    session.info[_DRIVER] = (session.sync_session.get_transaction(), raw.driver_connection)
    return raw.driver_connection  # type: ignore[return-value]


def _wrapped(sql: str, args: tuple[object, ...], exc: Exception) -> DBAPIError:
    if isinstance(exc, asyncpg.PostgresError):
        return _TYPED.get(str(exc.sqlstate), DBAPIError)(sql, args, exc)
    return DBAPIError(sql, args, exc, connection_invalidated=_is_loss(exc, None))


async def raw_fetchrow(connection: asyncpg.Connection, sql: str, *args: object) -> asyncpg.Record | None:
    try:
        return await connection.fetchrow(sql, *args)
    except (asyncpg.PostgresError, *_LOST) as exc:
        raise _wrapped(sql, args, exc) from exc


async def raw_execute(connection: asyncpg.Connection, sql: str, *args: object) -> None:
    try:
        await connection.execute(sql, *args)
    except (asyncpg.PostgresError, *_LOST) as exc:
        raise _wrapped(sql, args, exc) from exc


async def get_session() -> AsyncIterator[AsyncSession]:
    async with unit_of_work() as session:
        yield session
