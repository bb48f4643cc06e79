"""Admission control: a bounded number of requests in flight per process, a short bounded wait
for a slot, and a quick 503 `server_busy` with `Retry-After` beyond it, so that overload is
answered instead of queueing until clients time out. Health checks, metrics and WebSockets
(long-lived, bounded elsewhere) are not counted.

A pure ASGI middleware, installed outermost: a refusal must cost next to nothing, or the refusals
themselves saturate the event loop. So it skips the whole stack (no access-log line; counted in
`c3po_requests_shed_total` instead) and carries only its own `X-Request-ID`.
"""

import json
import uuid

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problem_docs import PROBLEM_MEDIA_TYPE
from app.config import Settings
from app.errors import ServerBusy
from app.utils.gate import Gate

EXEMPT_PREFIXES = ("/health", "/metrics")
SHED = Counter("c3po_requests_shed_total", "Requests answered 503 server_busy by the admission limit")


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
            SHED.inc()
            await _refuse(busy, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.release()


async def _refuse(busy: ServerBusy, send: Send) -> None:
    problem = {
        "type": f"urn:c3po:problem:{busy.code}",
        "title": busy.title,
        "status": busy.status,
        "detail": busy.detail,
        "code": busy.code,
    }
    body = json.dumps(problem).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", uuid.uuid4().hex.encode()),
        (b"x-content-type-options", b"nosniff"),
        *((name.lower().encode(), value.encode()) for name, value in busy.headers.items()),
    ]
    await send({"type": "http.response.start", "status": busy.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
