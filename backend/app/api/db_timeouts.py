"""A database timeout (`statement_timeout`, `lock_timeout`) answers 503 `database_timeout`, not 500.

Separate from the connection-failure handling in app/api/problems.py: app/database.py raises these
as their own DBAPIError subclasses, so each has a handler of its own.
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loguru import logger

from app.api.problems import problem_response
from app.database import LockTimeout, StatementTimeout
from app.errors import DatabaseTimeout
from app.utils.redact import redact_path

RETRY_AFTER_SECONDS = 1
_DETAILS = {
    StatementTimeout: "The request took the database too long; please try again",
    LockTimeout: "What this request changes is busy in another request; please try again",
}


async def _timed_out(request: Request, exc: Exception) -> JSONResponse:
    path = redact_path(request.url.path)  # a manage link or feed URL carries its credential in the path
    logger.warning("{} {}: {}", request.method, path, str(getattr(exc, "orig", exc)).splitlines()[0])
    error = DatabaseTimeout
    detail = _DETAILS.get(type(exc), error.title)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return problem_response(error.status, error.code, error.title, detail, headers)


def install_db_timeout_handlers(app: FastAPI) -> None:
    for error in _DETAILS:
        app.add_exception_handler(error, _timed_out)
