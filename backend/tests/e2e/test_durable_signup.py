"""Register, resend and password reset do their work in the request's transaction: a real API process
killed with SIGKILL the moment it has answered 202 leaves the account and its queued email behind."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from app.models import User
from tests.apiserver import STARTUP_SECONDS
from tests.e2e.test_ws_fanout import BACKEND_DIR, _free_port
from tests.factories import PASSWORD, create_user, outbox, unique_email

AUTH = "/api/v1/auth"


@contextlib.contextmanager
def api_process(service_urls, log_path) -> Iterator[tuple[subprocess.Popen, str]]:
    """One uvicorn process of the app; (process, base URL) once it answers /health."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": service_urls["database_url"],
        "REDIS_URL": service_urls["redis_url"],
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the API did not come up"
            time.sleep(0.2)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(15)
        print(f"--- {log_path.name}\n{log_path.read_text(errors='replace')}")


def _kill_right_after(process: subprocess.Popen, base: str, path: str, body: dict) -> None:
    answer = httpx.post(f"{base}{AUTH}{path}", json=body, timeout=10)
    process.send_signal(signal.SIGKILL)  # no shutdown, no background task, no chance to finish anything
    assert answer.status_code == 202, answer.text
    process.wait(10)


async def test_register_survives_a_sigkill_right_after_the_202(service_urls, session, tmp_path):
    email = unique_email()
    with api_process(service_urls, tmp_path / "api.log") as (process, base):
        body = {"email": email, "password": "a long unusual passphrase", "full_name": "Ada Lovelace"}
        _kill_right_after(process, base, "/register", body)

    user = await session.scalar(select(User).where(User.email == email))
    assert user is not None and not user.is_verified
    assert [m.payload["template"] for m in await outbox(session, to=email)] == ["verify_email"]


@pytest.mark.parametrize(
    ("path", "template", "verified"),
    [("/verify-email/resend", "verify_email", False), ("/password-reset", "password_reset", True)],
)
async def test_resend_and_reset_survive_a_sigkill_right_after_the_202(
    service_urls, session, tmp_path, path, template, verified
):
    user = await create_user(session, verified=verified)
    with api_process(service_urls, tmp_path / "api.log") as (process, base):
        _kill_right_after(process, base, path, {"email": user.email})

    assert [m.payload["template"] for m in await outbox(session, to=user.email)] == [template]


async def test_signing_in_right_after_registering_says_the_email_is_not_verified(service_urls, tmp_path):
    email = unique_email()
    with (
        api_process(service_urls, tmp_path / "api.log") as (_, base),
        httpx.Client(base_url=base, timeout=60) as http,
    ):  # hashing runs at nice 19: slow on a busy machine
        body = {"email": email, "password": PASSWORD, "full_name": "Ada Lovelace"}
        assert http.post(f"{AUTH}/register", json=body).status_code == 202
        signed_in = http.post(f"{AUTH}/login", data={"username": email, "password": PASSWORD})

    assert signed_in.status_code == 403, signed_in.text
    assert signed_in.json()["code"] == "email_not_verified"
