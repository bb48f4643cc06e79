"""`python -m app dev` run as a developer runs it: the API answers, the demo admin signs in, a
registration's verification email lands in the mail folder (through the real worker and SMTP
catcher), and Ctrl-C stops everything it started.

Two ways: with DATABASE_URL/REDIS_URL pointing at the test session's servers, and with neither
set, so that `dev` starts embedded PostgreSQL and Valkey under its DATA_DIR — the README's
zero-setup path.
"""

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import psutil
import pytest

from app.services.demo import DEMO_PASSWORD
from app.utils.mailcatcher import extract_links, free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class DevServer:
    process: subprocess.Popen
    base_url: str
    data_dir: Path
    log: Path
    embedded: bool
    watched: list[psutil.Process] = field(default_factory=list)

    def wait_for[T](self, probe: Callable[[], T | None], what: str, timeout: float = 90) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"`dev` exited with {self.process.returncode} waiting for {what}:\n{self.log.read_text()}")
            if result := probe():
                return result
            time.sleep(0.2)
        pytest.fail(f"no {what} within {timeout} s:\n{self.log.read_text()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def embedded_servers(self) -> list[psutil.Process]:
        """The embedded PostgreSQL and Valkey daemons (not our children: they detach)."""
        pid_files = [self.data_dir / "postgres" / "postmaster.pid", self.data_dir / "valkey" / "valkey.pid"]
        return [psutil.Process(int(path.read_text().split()[0])) for path in pid_files]


@contextmanager
def running_dev(tmp_path: Path, env: dict[str, str], *, embedded: bool) -> Iterator[DevServer]:
    port = free_port()
    env = env | {"DATA_DIR": str(tmp_path), "MAIL_PORT": str(free_port()), "LOG_LEVEL": "INFO"}
    log = tmp_path / "dev.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "dev", "--port", str(port), "--no-reload"],
            cwd=BACKEND_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = DevServer(process, f"http://127.0.0.1:{port}", tmp_path, log, embedded)
    try:
        yield server
    finally:
        if process.poll() is None:  # the test failed half-way: stop it the way a developer would
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for leftover in server.watched:
            if alive(leftover):
                leftover.kill()


def test_with_configured_servers(service_urls, tmp_path):
    env = os.environ | {"DATABASE_URL": service_urls["database_url"], "REDIS_URL": service_urls["redis_url"]}
    with running_dev(tmp_path, env, embedded=False) as dev:
        runs_the_stack_and_stops_cleanly_on_ctrl_c(dev)


def test_with_nothing_configured_starts_embedded_servers(tmp_path):
    """A fresh clone: no servers, no environment, no key (dev makes one and keeps it in DATA_DIR)."""
    unset = ("DATABASE_URL", "REDIS_URL", "ENVIRONMENT", "SECRET_KEY")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    with running_dev(tmp_path, env, embedded=True) as dev:
        runs_the_stack_and_stops_cleanly_on_ctrl_c(dev)
    assert len((tmp_path / "secret_key").read_text().strip()) >= 32


def runs_the_stack_and_stops_cleanly_on_ctrl_c(dev: DevServer) -> None:
    dev.wait_for(dev.healthy, "answer on /health")
    dev.wait_for(lambda: "c3po backend is running" in dev.log.read_text(), "banner")
    children = psutil.Process(dev.process.pid).children(recursive=True)
    dev.watched += children
    commands = [" ".join(child.cmdline()) for child in children]
    assert any("-m app worker" in command for command in commands), commands
    assert any("uvicorn app.main:create_app" in command for command in commands), commands
    if dev.embedded:
        dev.watched += dev.embedded_servers()
        assert all(alive(server) for server in dev.embedded_servers())

    with httpx.Client(base_url=dev.base_url, timeout=10) as http:
        login = http.post("/api/v1/auth/login", data={"username": "admin@example.com", "password": DEMO_PASSWORD})
        assert login.status_code == 200, login.text
        signed_in = {"Authorization": f"Bearer {login.json()['access_token']}"}
        feed = http.get("/api/v1/users/me/calendar-feed", headers=signed_in).json()["url"]
        assert feed.startswith(f"{dev.base_url}/api/v1/calendar-feeds/")  # PUBLIC_API_URL: this server
        assert http.get(feed).headers["content-type"].startswith("text/calendar")
        assert f"{dev.base_url}/admin" in dev.log.read_text()  # the banner points to the panel
        page = http.get("/admin/login")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        form = {"username": "admin@example.com", "password": DEMO_PASSWORD, "csrf_token": token}
        assert http.post("/admin/login", data=form).status_code == 302
        panel = http.get("/admin/appointment/list")
        assert panel.status_code == 200 and "Appointments" in panel.text

        registered = http.post(
            "/api/v1/auth/register",
            json={"email": "newcomer@example.com", "password": "a long unusual passphrase", "full_name": "New Comer"},
        )
        assert registered.status_code == 202, registered.text

        def verification_mail() -> list[Path]:
            return [p for p in (dev.data_dir / "mail").glob("*.eml") if b"newcomer@example.com" in p.read_bytes()]

        [eml] = dev.wait_for(verification_mail, "verification email in DATA_DIR/mail")
        message = message_from_bytes(eml.read_bytes(), policy=policy.default)
        [link] = [link for link in extract_links(message) if "/verify-email?token=" in link]
        dev.wait_for(lambda: link in dev.log.read_text(), "the link printed by the catcher for the developer")

        verified = http.post("/api/v1/auth/verify-email", json={"token": link.split("token=", 1)[1]})
        assert verified.status_code == 200, verified.text
        assert verified.json()["is_verified"] is True

    dev.process.send_signal(signal.SIGINT)
    assert dev.process.wait(timeout=60) == 0, dev.log.read_text()
    assert [p.pid for p in dev.watched if alive(p)] == [], dev.log.read_text()
    assert not dev.healthy()
