"""Pure ASGI middleware: request id, security headers, last-resort 500s, body size limit (no body buffering)."""

import re
import time
import uuid
from http import HTTPStatus

from loguru import logger
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import INTERNAL_DETAIL, problem_response
from app.errors import InternalError
from app.logging import request_id_var
from app.utils.redact import redact_path

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

# /docs and /redoc load Swagger UI and ReDoc from the app itself (fastapi-offline): no third-party host.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc", "/admin")
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_API_CSP = (b"content-security-policy", API_CSP.encode())
_DOCS_CSP = (b"content-security-policy", DOCS_CSP.encode())
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
QUIET_PATHS = ("/health", "/metrics")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        defaults = (*_SECURITY_HEADERS, _DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else _API_CSP)
        if self.hsts:
            defaults = (*defaults, _HSTS)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                # Raw headers in one pass: a route's own value wins, ours fill in (the request id is always ours).
                headers = [item for item in message.get("headers", ()) if item[0].lower() != b"x-request-id"]
                present = {name.lower() for name, _ in headers}
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.extend(item for item in defaults if item[0] not in present)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # Answered here, not by Starlette's outermost error middleware: its 500 would bypass this
            # middleware (no request id, no security headers) and be logged without the request id.
            logger.opt(exception=exc).error("unhandled error")
            if response_started or scope["type"] != "http":
                raise
            await _internal_error()(scope, receive, send_with_headers)
        finally:
            if scope["type"] == "http" and not scope["path"].startswith(QUIET_PATHS):
                elapsed_ms = (time.perf_counter() - started) * 1000
                # The path only, never the query string; a token in the path is masked.
                logger.info("{} {} {} {:.1f}ms", scope["method"], redact_path(scope["path"]), status, elapsed_ms)
            request_id_var.reset(token)


def _internal_error() -> JSONResponse:
    return problem_response(InternalError.status, InternalError.code, InternalError.title, INTERNAL_DETAIL)


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes"


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`: at once when `Content-Length` says so, else while it streams in.

    Runs inside `RequestContextMiddleware`, so the 413 carries the same headers as every other answer.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(413, "payload_too_large", HTTPStatus(413).phrase, _too_large(self.max_bytes))
            await response(scope, receive, send)
            return
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)  # rendered by the HTTPException problem handler
            return message

        await self.app(scope, receive_with_limit, send)
