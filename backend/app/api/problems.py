"""Every error leaves as RFC 9457 `application/problem+json` with a stable `code`."""

from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from loguru import logger
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.dependency_errors import database_down
from app.api.problem_docs import PROBLEM_MEDIA_TYPE, problem_responses
from app.errors import (
    AppError,
    DatabaseUnavailable,
    InternalError,
    InvalidValue,
    RedisUnavailable,
    ServerBusy,
    ServiceUnavailable,
    ValidationFailed,
)

__all__ = ["PROBLEM_MEDIA_TYPE", "install_problem_handlers", "problem_response", "problem_responses"]

INTERNAL_DETAIL = "Something went wrong on our side"
_HTTP_CODES = {
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def problem_response(
    status: int, code: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": f"urn:c3po:problem:{code}", "title": title, "status": status, "detail": detail, "code": code}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _app_error(_: Request, exc: AppError) -> JSONResponse:
    return problem_response(exc.status, exc.code, exc.title, exc.detail, exc.headers, **exc.extra)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": [str(p) if not isinstance(p, int) else p for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    error = ValidationFailed
    return problem_response(error.status, error.code, error.title, "The request is not valid", errors=errors)


def _allowed_methods(request: Request) -> str:
    """Every method the path answers to: the router's 405 names only the first route that matched the path."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and route.methods and regex.match(path):
            methods |= route.methods
    return ", ".join(sorted(methods))


# FastAPI's 400 for a body it could not even decode (bytes that are not UTF-8, a broken multipart
# form); a body that decodes but is not JSON is already a 422. Both are "the body is not valid".
_UNREADABLE_BODY = "There was an error parsing the body"


def _unreadable_body(request: Request) -> JSONResponse:
    json_route = "json" in request.headers.get("content-type", "")
    issue = {
        "loc": ["body"],
        "msg": "The body cannot be read: " + ("not UTF-8 JSON" if json_route else "not a well-formed form"),
        "type": "json_invalid" if json_route else "body_invalid",
    }
    return problem_response(422, "validation_error", "Validation error", "The request is not valid", errors=[issue])


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == _UNREADABLE_BODY:
        return _unreadable_body(request)
    phrase = HTTPStatus(exc.status_code).phrase
    code = _HTTP_CODES.get(exc.status_code, phrase.lower().replace(" ", "_"))
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return problem_response(exc.status_code, code, phrase, detail, headers)


def _unavailable(error: ServiceUnavailable, cause: Exception) -> JSONResponse:
    # No traceback: an outage fails every request the same way, and thousands of them cost CPU.
    logger.warning("503 {}: {}: {}", error.code, type(cause).__name__, cause)
    return problem_response(error.status, error.code, error.title, error.detail, error.headers)


async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
    return _unavailable(RedisUnavailable("Please try again shortly"), exc)


async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
    return _unavailable(ServerBusy("No database connection came free in time; please try again"), exc)


async def _connection_failed(request: Request, exc: Exception) -> JSONResponse:
    """OSError and asyncpg's own errors escape SQLAlchemy unwrapped when a new connection fails."""
    if database_down(exc):
        return _unavailable(DatabaseUnavailable("Please try again shortly"), exc)
    return await _unexpected(request, exc)


async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
    if database_down(exc):
        return _unavailable(DatabaseUnavailable("Please try again shortly"), exc)
    if str(getattr(exc.orig, "sqlstate", "")).startswith("22"):
        # Class 22 "data exception": a value the database cannot store (a NUL character, say).
        error = InvalidValue
        return problem_response(error.status, error.code, error.title, "A value in the request cannot be stored")
    return await _unexpected(request, exc)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.opt(exception=exc).error("unhandled error")
    return problem_response(InternalError.status, InternalError.code, InternalError.title, INTERNAL_DETAIL)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisError, _redis_down)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    for raw in (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        app.add_exception_handler(raw, _connection_failed)
    app.add_exception_handler(Exception, _unexpected)
