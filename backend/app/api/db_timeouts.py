"""A database timeout (`statement_timeout`, `lock_timeout`) answers 503 `database_timeout`, and a
transaction PostgreSQL rolled back (a deadlock broken, a serialization failure) 503
`transaction_conflict`: not 500, since nothing was changed and trying again is the fix.

Separate from the connection-failure handling in app/api/problems.py: app/database.py raises these
as their own DBAPIError subclasses, so each has a handler of its own.
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loguru import logger

from app.api.problems import problem_response
from app.database import LockTimeout, StatementTimeout, TransactionRollback
from app.errors import DatabaseTimeout, ServiceUnavailable, TransactionConflict
from app.utils.redact import redact_path

RETRY_AFTER_SECONDS = 1
_ANSWERS: dict[type[Exception], tuple[type[ServiceUnavailable], str]] = {
    StatementTimeout: (DatabaseTimeout, "The request took the database too long; please try again"),
    LockTimeout: (DatabaseTimeout, "What this request changes is busy in another request; please try again"),
    TransactionRollback: (TransactionConflict, "The request collided with another and was undone; please try again"),
}


async def _try_again_later(request: Request, exc: Exception) -> JSONResponse:
    path = redact_path(request.url.path)  # a manage link or feed URL carries its credential in the path
    logger.warning("{} {}: {}", request.method, path, str(getattr(exc, "orig", exc)).splitlines()[0])
    error, detail = _ANSWERS[type(exc)]
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return problem_response(error.status, error.code, error.title, detail, headers)


def install_db_timeout_handlers(app: FastAPI) -> None:
    for error in _ANSWERS:
        app.add_exception_handler(error, _try_again_later)
