"""Reusable Annotated dependencies: the session, the caller, their role, their address."""

import email.message
import ipaddress
from functools import lru_cache
from typing import Annotated

import jwt
from fastapi import Depends, Query, Request, params
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from app.api import API_PREFIX
from app.api.problem_docs import documented
from app.config import get_settings
from app.database import get_session
from app.errors import Forbidden, InvalidToken, RateLimited, Unauthorized, UnsupportedMediaType
from app.models import Role, User
from app.schemas.inputs import QueryInt
from app.services.accounts import auth
from app.utils.security import AccessClaims, decode_access_token

# scope="function": the transaction commits before the response is sent, so a failed commit is never a 2xx.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]

FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _accepts(media_type: str, *, form: bool) -> bool:
    if form:
        return media_type in FORM_MEDIA_TYPES
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def require_body_media_type(request: HTTPConnection) -> None:
    """415 for a body the route cannot read: not JSON for a JSON route, not a form for a form route.

    FastAPI itself would hand such a body to validation and answer a puzzling 422.
    """
    if request.scope["type"] != "http":
        return  # a WebSocket has no body to check
    body_field = getattr(request.scope.get("route"), "body_field", None)
    if body_field is None:
        return
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    if not has_body:
        return
    form = isinstance(body_field.field_info, params.Form)
    header = email.message.Message()
    header["content-type"] = request.headers.get("content-type", "")
    media_type = header.get_content_type() if request.headers.get("content-type") else ""
    if not _accepts(media_type, form=form):
        expected = "a form (application/x-www-form-urlencoded)" if form else "JSON (application/json)"
        raise UnsupportedMediaType(f"Send the body as {expected}")


# Pagination parameters shared by every list: `?limit=` (1..200, default 50 at the route) and `?offset=`
# (bounded too: a deeper page is a search that should be narrowed, and the database needs an int64).
MAX_OFFSET = 1_000_000
Limit = Annotated[QueryInt, Query(ge=1, le=200, description="Page size")]
Offset = Annotated[QueryInt, Query(ge=0, le=MAX_OFFSET, description="Items to skip")]

TOKEN_URL = f"{API_PREFIX}/auth/login"
oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def claims_of(token: str | None) -> AccessClaims:
    """The verified claims of an access token; 401 when there is none or it is not valid."""
    if not token:
        raise Unauthorized()
    try:
        return decode_access_token(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidToken() from exc


class _AccessClaimsBearer(OAuth2PasswordBearer):
    """The Bearer scheme that answers the token's verified claims: one dependency where a scheme and a
    check of its token were two (FastAPI's own work per request grows with every dependency solved)."""

    async def __call__(self, request: HTTPConnection) -> AccessClaims:  # type: ignore[override]
        return claims_of(await super().__call__(request))


# The same scheme in the schema as `oauth2_scheme`: a route that depends on it requires a token.
get_access_claims = documented(Unauthorized, InvalidToken)(
    _AccessClaimsBearer(tokenUrl=TOKEN_URL, scheme_name=type(oauth2_scheme).__name__, auto_error=False)
)
Claims = Annotated[AccessClaims, Depends(get_access_claims)]


@documented(InvalidToken)
async def get_current_user(session: DbSession, claims: Claims) -> User:
    return await auth.authenticate_access(session, claims)


CurrentUser = Annotated[User, Depends(get_current_user)]


@documented(InvalidToken)
async def get_current_user_view(claims: Claims) -> auth.UserView:
    return await auth.authenticate_access_view(claims)


# For routes that only read the caller (`GET /users/me`): the same checks, without a session or ORM object.
CurrentUserView = Annotated[auth.UserView, Depends(get_current_user_view)]


def require_role(*roles: Role):
    @documented(Forbidden)
    async def dependency(user: CurrentUser) -> User:
        if user.role not in roles:
            raise Forbidden("Your role does not allow this")
        return user

    return dependency


StaffUser = Annotated[User, Depends(require_role(Role.staff, Role.admin))]
AdminUser = Annotated[User, Depends(require_role(Role.admin))]


@lru_cache
def _trusted_networks(raw: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in raw)


type IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(value: str) -> IPAddress | None:
    """An address, IPv4-mapped IPv6 (`::ffff:192.0.2.1`, as dual-stack sockets report IPv4 peers) as IPv4."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def _is_trusted(address: str, networks) -> bool:
    ip = _parse_ip(address)
    return ip is not None and any(ip in network for network in networks)


def get_client_ip(request: Request) -> str:
    """The peer address; `X-Forwarded-For` is believed only hop by hop through configured proxies."""
    peer = request.client.host if request.client else "unknown"
    networks = _trusted_networks(tuple(get_settings().trusted_proxies))
    if not networks or not _is_trusted(peer, networks):
        return _normalised(peer)
    # Every header line counts (RFC 9110 §5.3): a proxy that adds its own line after the client's
    # would otherwise leave us reading only the line the client wrote.
    lines = request.headers.getlist("x-forwarded-for")
    forwarded = [part.strip() for line in lines for part in line.split(",") if part.strip()]
    for address in reversed(forwarded):
        if not _is_trusted(address, networks):
            return _normalised(address)
    return _normalised(forwarded[0] if forwarded else peer)


def _normalised(address: str) -> str:
    ip = _parse_ip(address)
    return str(ip) if ip is not None else address


ClientIP = Annotated[str, Depends(get_client_ip)]


@documented(RateLimited)
def get_rate_limit_ip(client_ip: ClientIP) -> str:
    """What per-IP limits count against: an IPv4 address, or the IPv6 /64 around an IPv6 one.

    One subscriber usually holds a whole /64 (or more): counting single IPv6 addresses would let
    them rotate through 2**64 of them and never be limited.
    """
    ip = _parse_ip(client_ip)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network((ip, 64), strict=False))
    return client_ip


RateLimitIP = Annotated[str, Depends(get_rate_limit_ip)]
