"""Small async factories: users straight into the database, sessions without the cost of a login.

Argon2 costs tens of milliseconds per hash, so a password is hashed once per test run and reused;
`start_session` mints the same token pair a login hands out (refresh family in Redis, signed access
token) without verifying a password. Tests about login itself go through `/auth/login`.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from faker import Faker
from httpx import AsyncClient, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import OutboxMessage, Role, User
from app.services.accounts import tokens
from app.utils.security import create_access_token, hash_password

fake = Faker()

PASSWORD = "plum tree under a violet moon"
LOGIN_URL = "/api/v1/auth/login"

_hashes: dict[str, str] = {}


async def hashed(password: str) -> str:
    if password not in _hashes:
        _hashes[password] = await hash_password(password)
    return _hashes[password]


def unique_email() -> str:
    return f"{fake.user_name()}.{uuid.uuid4().hex[:8]}@example.org".lower()


async def create_user(
    session: AsyncSession,
    *,
    email: str | None = None,
    password: str = PASSWORD,
    hashed_password: str | None = None,
    role: Role = Role.user,
    verified: bool = True,
    active: bool = True,
    full_name: str | None = None,
    phone: str | None = None,
    timezone: str = "UTC",
    locale: str = "en",
) -> User:
    user = User(
        email=email or unique_email(),
        hashed_password=hashed_password or await hashed(password),
        full_name=full_name or fake.name(),
        phone=phone,
        timezone=timezone,
        locale=locale,
        role=role.value,
        is_active=active,
        email_verified_at=datetime.now(UTC) if verified else None,
    )
    session.add(user)
    await session.commit()
    return user


@dataclass(frozen=True)
class Session:
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def start_session(user: User) -> Session:
    """The token pair a successful login would hand out, minted directly (no password hashing)."""
    family, refresh_token = await tokens.start_family(user.id)
    access_token, _ = create_access_token(user.id, user.role, session_id=family)
    return Session(access_token, refresh_token)


async def login(client: AsyncClient, email: str, password: str = PASSWORD) -> Response:
    return await client.post(LOGIN_URL, data={"username": email, "password": password})


async def login_session(client: AsyncClient, email: str, password: str = PASSWORD) -> Session:
    response = await login(client, email, password)
    assert response.status_code == 200, response.text
    body = response.json()
    return Session(body["access_token"], body["refresh_token"])


async def refresh(client: AsyncClient, refresh_token: str) -> Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})


async def reload(session: AsyncSession, user: User) -> User:
    """The row as it is now, after the API changed it in its own transaction."""
    await session.refresh(user)
    return user


async def outbox(session: AsyncSession, *, to: str | None = None, template: str | None = None) -> list[OutboxMessage]:
    query = select(OutboxMessage).order_by(OutboxMessage.id)
    rows = (await session.scalars(query)).all()
    return [
        m
        for m in rows
        if (to is None or m.payload["to"] == to) and (template is None or m.payload["template"] == template)
    ]


def link_token(message: OutboxMessage) -> str:
    """The `token=` query parameter of the link mailed in a verification or reset email."""
    return parse_qs(urlsplit(message.payload["context"]["link"]).query)["token"][0]


async def mailed_token(session: AsyncSession, email: str, template: str) -> str:
    messages = await outbox(session, to=email, template=template)
    assert messages, f"no {template} email for {email}"
    return link_token(messages[-1])
