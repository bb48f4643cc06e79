"""Pure ASGI middleware: request id, security headers, last-resort 500s, body size limit (no body buffering)."""

import random
import re
import time
from http import HTTPStatus

from loguru import logger
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import INTERNAL_DETAIL, problem_response
from app.errors import InternalError
from app.logging import access_line, request_id_var
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
        extra = (_HSTS,) if hsts else ()
        self._api_defaults = (*_SECURITY_HEADERS, _API_CSP, *extra)
        self._docs_defaults = (*_SECURITY_HEADERS, _DOCS_CSP, *extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope["headers"])
        token = request_id_var.set(request_id)
        raw_id = request_id.encode("latin-1")
        path = scope["path"]
        defaults = self._docs_defaults if path.startswith(DOCS_PATHS) else self._api_defaults
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
                headers.append((b"x-request-id", raw_id))
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
            if scope["type"] == "http" and not path.startswith(QUIET_PATHS):
                # The path only, never the query string; a token in the path is masked.
                access_line(scope["method"], redact_path(path), status, (time.perf_counter() - started) * 1000)
            request_id_var.reset(token)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's `X-Request-ID` when it is a sensible one, else a new random one (32 hex digits)."""
    for name, value in headers:
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(incoming):
                return incoming
            break
    # Not a secret, only unique: the PRNG, not a uuid4 (an os.urandom system call and an object per request).
    return f"{random.getrandbits(128):032x}"


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
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
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
