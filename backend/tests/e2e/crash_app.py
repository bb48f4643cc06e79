"""The API for crash tests, and only for them: a request carrying `X-Test-Crash: after-commit` makes
the process SIGKILL itself the moment its transaction has committed, before anything else runs (the
after-commit actions, the answer). Nothing in `app/` knows about it."""

import os
import signal

from fastapi import FastAPI, Request
from sqlalchemy import event

from app.database import get_session, unit_of_work
from app.main import create_app as create_real_app

CRASH_HEADER = "X-Test-Crash"


def _die(session) -> None:
    if not session.in_nested_transaction():  # the event fires on each SAVEPOINT release too
        os.kill(os.getpid(), signal.SIGKILL)


async def _crashing_session(request: Request):
    async with unit_of_work() as session:
        if request.headers.get(CRASH_HEADER) == "after-commit":
            event.listen(session.sync_session, "after_commit", _die)
        yield session


def create_app() -> FastAPI:
    app = create_real_app()
    app.dependency_overrides[get_session] = _crashing_session
    return app
