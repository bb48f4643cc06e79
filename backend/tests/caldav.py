"""A real CalDAV server for tests: Radicale, as a subprocess on a free local port, with its own
storage folder and a plain htpasswd file.

`radicale(tmp_path)` yields a `Radicale` whose `calendar(name)` creates a calendar with MKCALENDAR
and whose `put(calendar_url, uid, ics)` stores one event, both over HTTP as a calendar app would.
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.httpserver import free_port

USER, PASSWORD = "anna", "radicale-secret-pw"


@dataclass
class Radicale:
    url: str
    user: str = USER
    password: str = PASSWORD

    def _client(self) -> httpx.Client:
        return httpx.Client(auth=(self.user, self.password), timeout=10)

    def calendar(self, name: str) -> str:
        url = f"{self.url}/{self.user}/{name}/"
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<c:mkcalendar xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
            f"<d:set><d:prop><d:displayname>{name}</d:displayname></d:prop></d:set></c:mkcalendar>"
        )
        with self._client() as http:
            response = http.request("MKCALENDAR", url, content=body)
        assert response.status_code == 201, response.text
        return url

    def put(self, calendar_url: str, uid: str, ics: str) -> None:
        with self._client() as http:
            response = http.put(
                f"{calendar_url}{uid}.ics", content=ics.encode(), headers={"Content-Type": "text/calendar"}
            )
        assert response.status_code in (201, 204), response.text

    def get(self, url: str) -> str | None:
        """An event resource's text, None if there is none."""
        with self._client() as http:
            response = http.get(url)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return response.text

    def delete(self, calendar_url: str, uid: str) -> None:
        with self._client() as http:
            assert http.delete(f"{calendar_url}{uid}.ics").status_code in (200, 204)


@contextmanager
def radicale(folder: Path) -> Iterator[Radicale]:
    users = folder / "users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radicale",
            "--server-hosts",
            f"127.0.0.1:{port}",
            "--storage-filesystem-folder",
            str(folder / "collections"),
            "--auth-type",
            "htpasswd",
            "--auth-htpasswd-filename",
            str(users),
            "--auth-htpasswd-encryption",
            "plain",
            "--rights-type",
            "owner_only",
            "--logging-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Radicale(f"http://127.0.0.1:{port}")
    try:
        _wait_until_up(process, server.url)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"radicale exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("radicale did not start within 20 s")
