"""Admission control: a bounded number of requests in flight per process, a short bounded wait
for a slot, and a quick 503 `server_busy` with `Retry-After` beyond it, so that overload is
answered instead of queueing until clients time out. Health checks, metrics and WebSockets
(long-lived, bounded elsewhere) are not counted.

A pure ASGI middleware (no BaseHTTPMiddleware task per request); install it innermost, so the
503 still carries the request id, CORS headers and an access-log line.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_response
from app.config import Settings
from app.errors import ServerBusy
from app.utils.gate import Gate

EXEMPT_PREFIXES = ("/health", "/metrics")


class AdmissionLimit:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        timeout = settings.request_queue_timeout_seconds
        self.gate = Gate(settings.max_in_flight_requests, timeout=timeout, what="a free request slot")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        try:
            await self.gate.acquire()
        except ServerBusy as busy:
            response = problem_response(busy.status, busy.code, busy.title, busy.detail, busy.headers)
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release()
