"""Test harness: a fresh database built by Alembic on real PostgreSQL, a real Redis, per-test cleanup.

`TEST_DATABASE_URL` / `TEST_REDIS_URL` point at running servers (CI); when unset, embedded
PostgreSQL and Valkey are started for the session. The Redis database given is flushed between tests.

The suite runs in several pytest-xdist workers (`-n` in pyproject's addopts). Each worker has a
database of its own and a Redis database of its own (the given number, then the ones below it);
embedded servers are started once, by the controlling process, and shared by its workers.
"""

import asyncio
import os
import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from httpx import ASGITransport, AsyncClient

BACKEND_DIR = Path(__file__).resolve().parent.parent
# No key ships with the code: the tests sign with one of their own, new each run (each xdist worker has
# its own; the processes a test starts inherit it). Set before anything reads the settings.
TEST_SECRET_KEY = os.environ["SECRET_KEY"] = secrets.token_urlsafe(32)
os.environ.pop("SECRET_KEY_FILE", None)
os.environ.pop("PREVIOUS_SECRET_KEYS", None)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


_embedded_for_workers = None


def pytest_configure(config: pytest.Config) -> None:
    """With xdist, start the embedded servers once here, in the controller, for every worker."""
    global _embedded_for_workers
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    need_db = not os.environ.get("TEST_DATABASE_URL")
    need_redis = not os.environ.get("TEST_REDIS_URL")
    if not (need_db or need_redis):
        return
    from app.embedded import start_embedded

    _embedded_for_workers = start_embedded(
        Path(tempfile.mkdtemp(prefix="c3po-test-")), need_db=need_db, need_redis=need_redis
    )
    if need_db:
        os.environ["TEST_DATABASE_URL"] = _embedded_for_workers.database_url
    if need_redis:
        os.environ["TEST_REDIS_URL"] = _embedded_for_workers.redis_url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _embedded_for_workers
    if _embedded_for_workers is not None:
        _embedded_for_workers.stop()
        _embedded_for_workers = None


# The longest units first, the shortest last, so no worker is left with a long one at the end:
# schemathesis (one group per caller), the end-to-end tests (processes of their own), then the rest.
_FOLDER_ORDER = {"fuzz": 0, "e2e": 1, "integration": 2, "unit": 3}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Send whole modules to xdist workers (`--dist loadgroup`), so module fixtures start once, and a
    module may split itself into groups of its own (`xdist_group` marks; schemathesis does, by caller).

    Runs before xdist's own hook, which reads the marks."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: _FOLDER_ORDER.get(item.path.parent.name, len(_FOLDER_ORDER)))


def _worker_redis_url(url: str) -> str:
    """xdist worker gwN flushes Redis database (given - N) mod 16, so workers never share one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker.removeprefix("gw") or 0)
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base - offset) % 16}"))


@pytest.fixture(scope="session")
def service_urls() -> Iterator[dict[str, str]]:
    """Servers for the session and a database of our own on the PostgreSQL one."""
    embedded = None
    db_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not db_url or not redis_url:
        from app.embedded import start_embedded

        embedded = start_embedded(
            Path(tempfile.mkdtemp(prefix="c3po-test-")), need_db=not db_url, need_redis=not redis_url
        )
        db_url = db_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    redis_url = _worker_redis_url(redis_url)
    name = f"c3po_test_{uuid.uuid4().hex[:12]}"
    admin_url = _plain(db_url)

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    test_db_url = _with_database(_plain(db_url), name)
    os.environ.update(
        ENVIRONMENT="test",
        DATABASE_URL=test_db_url,
        REDIS_URL=redis_url,
        SECRET_KEY=TEST_SECRET_KEY,
        LOG_LEVEL="WARNING",
    )
    from app.config import get_settings

    get_settings.cache_clear()
    _migrate(test_db_url)
    try:
        yield {"database_url": test_db_url, "redis_url": redis_url, "admin_database_url": admin_url}
    finally:
        asyncio.run(drop())
        if embedded is not None:
            embedded.stop()


def _migrate(url: str) -> None:
    from alembic.config import Config

    from alembic import command

    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@pytest.fixture(scope="session")
async def app(service_urls):
    from app.main import create_app

    application = create_app()
    yield application
    from app.database import dispose_engine
    from app.redis import close_redis
    from app.services.messaging.events import close_hub

    await close_hub()
    from app.services.messaging.outbox import close_arq_pool
    from app.services.rate_limit import reset_limiter

    await close_arq_pool()
    await close_redis()
    reset_limiter()
    await dispose_engine()


@pytest.fixture(autouse=True)
async def _clean_state(request) -> AsyncIterator[None]:
    """Every test starts with empty tables and an empty Redis database."""
    if "service_urls" not in request.fixturenames and "app" not in request.fixturenames:
        yield
        return
    yield
    from tests.state import empty_state

    await empty_state()


# Whatever a test asks, no answer may ever carry a password hash: neither the field nor a hash value.
# (A 422 may name `hashed_password` in an error's `loc` when a client sent it; that is not a leak.)
_HASH_MARKERS = ('"hashed_password":', "$argon2", "$2b$")


async def _no_password_hash(response) -> None:
    body = (await response.aread()).decode("utf-8", "replace")
    leaked = [marker for marker in _HASH_MARKERS if marker in body]
    assert not leaked, f"{response.request.method} {response.request.url} leaked {leaked}"


def _documented_problems(app):
    from tests.contract import PROBLEM, check_problem

    async def hook(response) -> None:
        if response.request.method == "HEAD":  # no body to check: the GET of the same path is checked
            return
        if response.headers.get("content-type", "").startswith(PROBLEM):
            await response.aread()
            request = response.request
            check_problem(app, request.method, request.url.path, response.status_code, response.json())

    return hook


@pytest.fixture
async def client(app) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app, client=("203.0.113.7", 50000))
    hooks = {"response": [_no_password_hash, _documented_problems(app)]}
    async with AsyncClient(transport=transport, base_url="http://testserver", event_hooks=hooks) as http:
        yield http


@pytest.fixture
async def session(app):
    """A session for arranging data and checking results (commits are real)."""
    from app.database import get_sessionmaker

    async with get_sessionmaker()() as db:
        yield db


@pytest.fixture
def set_env(monkeypatch):
    """Change settings as an operator would: `set_env(EGRESS_ALLOWED_NETWORKS="127.0.0.0/8")` sets
    the variables and the settings are read again at once; both are restored after the test."""
    from app.config import get_settings

    def configure(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield configure
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def deploy_keys(monkeypatch):
    """Deploy new signing keys as an operator would: `deploy_keys(current, *previous)` sets
    `SECRET_KEY` and `PREVIOUS_SECRET_KEYS`, and the settings are read again at once."""
    from app.config import get_settings

    def deploy(current: str, *previous: str) -> None:
        monkeypatch.setenv("SECRET_KEY", current)
        monkeypatch.setenv("PREVIOUS_SECRET_KEYS", ",".join(previous))
        get_settings.cache_clear()

    yield deploy
    monkeypatch.undo()
    get_settings.cache_clear()
