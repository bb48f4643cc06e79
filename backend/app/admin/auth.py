"""Signing in to the panel: the API's sign-in (`panel_sessions.sign_in`), then a signed session cookie
(HttpOnly, SameSite=Strict, path /admin, Secure in production, `ADMIN_SESSION_MINUTES` long)."""

import hashlib

from sqladmin.authentication import AuthenticationBackend
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from app.admin.guard import PanelGuard, csrf_token
from app.api.deps import get_client_ip, get_rate_limit_ip
from app.config import Settings
from app.database import unit_of_work
from app.errors import AppError
from app.services.accounts import panel_sessions

COOKIE = "c3po_admin"


def _cookie_key(settings: Settings) -> str:
    """Not SECRET_KEY itself: a cookie signature must never double as a token signature."""
    return hashlib.sha256(b"c3po admin session cookie\x00" + settings.secret_key.encode()).hexdigest()


class PanelAuth(AuthenticationBackend):
    templates: Jinja2Templates | None = None  # the panel's, set once the Admin exists

    def __init__(self, settings: Settings, base_url: str) -> None:
        super().__init__(
            _cookie_key(settings),
            session_cookie=COOKIE,
            max_age=settings.admin_session_minutes * 60,
            path=base_url,
            same_site="strict",
            https_only=settings.is_production,
        )
        self.middlewares.append(Middleware(PanelGuard))

    async def login(self, request: Request) -> Response | bool:
        form = await request.form()
        email, password, code = (str(form.get(name) or "") for name in ("username", "password", "totp_code"))
        client_ip = get_rate_limit_ip(get_client_ip(request))
        try:
            async with unit_of_work() as session:
                _, session_id = await panel_sessions.sign_in(
                    session, email[:320], password[:1024], client_ip, code[:64]
                )
        except AppError as exc:
            return await self._refused(request, exc)
        request.session.clear()  # a new session id and CSRF token: nothing from before sign-in carries over
        request.session["sid"] = session_id
        csrf_token(request)
        return True

    async def _refused(self, request: Request, exc: AppError) -> Response:
        assert self.templates is not None
        context = {"error": exc.detail, "code": exc.code, "email": ""}
        response = await self.templates.TemplateResponse(
            request, "sqladmin/login.html", context, status_code=exc.status
        )
        response.headers.update(exc.headers)
        return response

    async def logout(self, request: Request) -> Response | bool:
        await panel_sessions.end(request.session.get("sid"))
        request.session.clear()
        return False

    async def authenticate(self, request: Request) -> bool:
        """The guard has already checked the session against the admin's current row."""
        return getattr(request.state, "admin_id", None) is not None
