"""Admission control: a bounded number of requests in flight per process, a short bounded wait
for a slot, and a quick 503 `server_busy` with `Retry-After` beyond it, so that overload is
answered instead of queueing until clients time out. Health checks, metrics and WebSockets
(long-lived, bounded elsewhere) are not counted. Requests that hash a password (sign-in, sign-up,
password changes) have a budget of their own, as large as the hashing queue
(`app.utils.security.hashing_gate`): a sign-in flood is refused at the door and never takes the
slots the other endpoints need.

A pure ASGI middleware, installed outermost: a refusal must cost next to nothing, or the refusals
themselves saturate the event loop. So it skips the whole stack (no access-log line; counted in
`c3po_requests_shed_total` instead) and carries only its own `X-Request-ID`.
"""

import json
import uuid

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import API_PREFIX
from app.api.problem_docs import PROBLEM_MEDIA_TYPE
from app.config import Settings
from app.errors import ServerBusy
from app.utils.gate import Gate

EXEMPT_PREFIXES = ("/health", "/metrics")
_HASHING = ("/auth/login", "/auth/register", "/auth/password-reset/confirm", "/users/me/password")
HASHING_PATHS = frozenset(API_PREFIX + path for path in _HASHING)
SHED = Counter("c3po_requests_shed_total", "Requests answered 503 server_busy by the admission limit")


class AdmissionLimit:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        timeout = settings.request_queue_timeout_seconds
        self.gate = Gate(settings.max_in_flight_requests, timeout=timeout, what="a free request slot")
        hashing = settings.password_hash_concurrency + settings.password_hash_max_waiting
        self.hashing = Gate(hashing, timeout=timeout, what="a free sign-in slot")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        gate = self.hashing if scope["path"] in HASHING_PATHS else self.gate
        try:
            await gate.acquire()
        except ServerBusy as busy:
            SHED.inc()
            await _refuse(busy, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            gate.release()


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
