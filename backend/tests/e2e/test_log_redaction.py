"""No secret in any log line: a real API (`python -m app serve`) and a real worker in production mode,
through every auth flow — register, verify, sign-in (and a failed one), refresh, a WebSocket signed in
with `?token=`, password reset, email change — then every line both wrote is searched for each
password, token and link that went by. The access log masks a token carried in a path.
"""

import asyncio
import json
import re
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from app.redis import close_redis
from tests.e2e.conftest import BACKEND_DIR, Stack
from tests.factories import unique_email
from tests.smtp import HOST, free_port, text_part

AUTH = "/api/v1/auth"
FRONTEND = "https://app.c3po.test"
_LINK = re.compile(rf"{re.escape(FRONTEND)}/\S+?token=([A-Za-z0-9_-]+)")


def start_api(stack: Stack, log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--workers", "1", "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=BACKEND_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, log_path.read_text()
        with suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        assert time.monotonic() < deadline, f"the API did not come up:\n{log_path.read_text()}"
        time.sleep(0.2)


async def mailed_token(stack: Stack, to: str, seen: int) -> tuple[str, str]:
    """The link and token in the next email to `to` (after the first `seen` messages)."""
    deadline = time.monotonic() + 60
    while True:
        for message in stack.smtp.messages[seen:]:
            if to in str(message["To"]) and (found := _LINK.search(text_part(message))):
                return found.group(0), found.group(1)
        assert time.monotonic() < deadline, f"no link mailed to {to}"
        await asyncio.sleep(0.1)


async def test_no_password_token_or_link_reaches_the_logs_in_production(stack, tmp_path):
    env = {**stack.env, "ENVIRONMENT": "production", "FRONTEND_URL": FRONTEND, "LOG_LEVEL": "INFO"}
    stack.env = env
    worker = stack.start_worker()
    api_log = tmp_path / "api.log"
    api, base = start_api(stack, api_log, env)
    email, new_email = unique_email(), unique_email()
    first, second, wrong = "first passphrase of ada", "second passphrase of ada", "not her passphrase at all"
    secrets: list[str] = [first, second, wrong]
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            seen = len(stack.smtp.messages)
            answer = await http.post(f"{AUTH}/register", json={"email": email, "password": first, "full_name": "Ada"})
            assert answer.status_code == 202, answer.text
            link, verify = await mailed_token(stack, email, seen)
            secrets += [link, verify]
            assert (await http.post(f"{AUTH}/verify-email", json={"token": verify})).status_code == 200
            # A token carried in a path (a client that built the URL wrongly): a 404, logged masked.
            assert (await http.get(f"{AUTH}/verify-email/{verify}")).status_code in (404, 405)

            failed = await http.post(f"{AUTH}/login", data={"username": email, "password": wrong})
            assert failed.status_code == 400
            pair = (await http.post(f"{AUTH}/login", data={"username": email, "password": first})).json()
            refreshed = await http.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
            assert refreshed.status_code == 200, refreshed.text
            renewed = refreshed.json()
            secrets += [pair["access_token"], pair["refresh_token"], renewed["access_token"], renewed["refresh_token"]]

            socket_url = f"ws://{base.removeprefix('http://')}/api/v1/ws?token={renewed['access_token']}"
            async with connect(socket_url) as socket_:
                assert json.loads(await asyncio.wait_for(socket_.recv(), 10))["type"] == "ready"

            seen = len(stack.smtp.messages)
            assert (await http.post(f"{AUTH}/password-reset", json={"email": email})).status_code == 202
            link, reset = await mailed_token(stack, email, seen)
            secrets += [link, reset]
            confirm = await http.post(f"{AUTH}/password-reset/confirm", json={"token": reset, "new_password": second})
            assert confirm.status_code == 204, confirm.text
            signed_in = (await http.post(f"{AUTH}/login", data={"username": email, "password": second})).json()
            secrets += [signed_in["access_token"], signed_in["refresh_token"]]

            bearer = {"Authorization": f"Bearer {signed_in['access_token']}"}
            seen = len(stack.smtp.messages)
            change = await http.post(
                "/api/v1/users/me/email", json={"new_email": new_email, "password": second}, headers=bearer
            )
            assert change.status_code == 202, change.text
            link, changed = await mailed_token(stack, new_email, seen)
            secrets += [link, changed]
            assert (await http.post(f"{AUTH}/email-change/confirm", json={"token": changed})).status_code == 200
    finally:
        api.terminate()
        api.wait(30)
        worker.stop()
        await close_redis()
        print(f"--- api.log\n{api_log.read_text(errors='replace')}")

    lines = api_log.read_text(errors="replace").splitlines() + worker.log().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    messages = [record["record"]["message"] for record in records]
    assert any(" /api/v1/auth/login 200 " in message for message in messages)  # the access log was captured
    assert any("WebSocket /api/v1/ws?token=[redacted]" in message for message in messages)
    assert any(f"GET {AUTH}/verify-email/[redacted] 40" in message for message in messages)
    assert any("sent" in message for message in messages if "outbox" in message)  # so was the worker's

    pieces = {piece for secret in secrets for piece in (secret, *secret.split(".")) if len(piece) >= 16}
    for line in lines:
        leaked = [piece for piece in pieces if piece in line]
        assert not leaked, f"{leaked} in {line}"
