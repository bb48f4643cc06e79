"""Every request under /admin passes here (inside the signed-session middleware):

- CSRF: a token per session (synchroniser pattern); every unsafe request must send it, as the form
  field `csrf_token` or the `X-CSRF-Token` header (the panel's pages add both), and a foreign
  `Origin` is refused outright. The cookie is SameSite=Strict besides.
- Sign-in: apart from the sign-in page and the static assets, every page needs a live panel
  session of a current admin, re-checked against the database and Redis on each request
  (`panel_sessions.current_admin`); otherwise the request is sent to the sign-in page.
"""

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.database import unit_of_work
from app.services.accounts import panel_sessions

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = ("/login",)
PUBLIC_PREFIXES = ("/statics/",)


def csrf_token(request: Request) -> str:
    """This session's token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _same_origin(headers: Headers) -> bool:
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == headers.get("host")


class PanelGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path = scope["path"][len(scope.get("root_path", "")) :] if scope.get("root_path") else scope["path"]
        expected = csrf_token(request)
        if scope["method"] not in SAFE_METHODS:
            body = await _read_body(receive)
            receive = _replay(body)
            if not _same_origin(request.headers) or not await self._csrf_ok(scope, body, expected):
                await PlainTextResponse("CSRF token missing or invalid: reload the page", status_code=403)(
                    scope, receive, send
                )
                return
        if not (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)):
            async with unit_of_work() as session:
                admin = await panel_sessions.current_admin(session, request.session.get("sid"))
            if admin is None:
                request.session.pop("sid", None)
                login = f"{scope.get('root_path', '')}/login"
                await RedirectResponse(login, status_code=303)(scope, receive, send)
                return
            scope.setdefault("state", {})["admin_id"] = admin.id
        await self.app(scope, receive, send)

    @staticmethod
    async def _csrf_ok(scope: Scope, body: bytes, expected: str) -> bool:
        headers = Headers(scope=scope)
        sent = headers.get(CSRF_HEADER)
        if sent is None and headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await Request(scope, _replay(body)).form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
            await form.close()
        return sent is not None and hmac.compare_digest(sent, expected)
