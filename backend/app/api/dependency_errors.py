"""Which exceptions mean "PostgreSQL is not there right now" (answered 503, not 500).

SQLAlchemy wraps what a live connection raises (`DBAPIError`, its `.orig` carrying the SQLSTATE),
but when a new connection fails asyncpg's own exception or a bare `OSError` escapes unwrapped.
"""

from types import TracebackType

import asyncpg
from sqlalchemy.exc import DBAPIError

# 08: connection exception; 57P01-57P03: the server is shutting down, crashed or still starting;
# 53300: too many connections. Not 57014 (query_canceled): a statement timeout is not an outage.
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_CLOSED_MARKERS = ("connection is closed", "connection was closed")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    pending: BaseException | None = exc
    while pending is not None and pending not in seen and len(seen) < 10:
        seen.append(pending)
        pending = getattr(pending, "orig", None) or pending.__cause__ or pending.__context__
    return seen


def _raised_by_driver(tb: TracebackType | None) -> bool:
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        tb = tb.tb_next
    return False


def _outage(exc: BaseException, *, wrapped: bool) -> bool:
    state = str(getattr(exc, "sqlstate", "") or "")
    if state.startswith("08") or state in _OUTAGE_STATES:
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return any(marker in str(exc) for marker in _CLOSED_MARKERS)
    # A refused or timed-out connect: inside a DBAPIError, or raised by the driver (not any OSError of ours).
    return isinstance(exc, OSError) and (wrapped or _raised_by_driver(exc.__traceback__))


def database_down(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the database cannot be reached or is going away."""
    wrapped = isinstance(exc, DBAPIError)
    if wrapped and exc.connection_invalidated:
        return True
    return any(_outage(link, wrapped=wrapped) for link in _chain(exc))
