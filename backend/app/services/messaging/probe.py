"""The worker's own HTTP port (`WORKER_METRICS_PORT` on `HOST`): `GET /health` and `GET /metrics`.

`/health` answers 200 while the outbox relay makes progress (the heartbeat below, beaten before each
delivery it attempts and after each pass) and 503 once it has not for `stale_after()` seconds. It
is served by the worker's own event loop, so an answer also shows that the loop is not stuck.
Compose's health check calls it. `/metrics` serves the worker's registry (`app.metrics.WORKER_REGISTRY`)
behind the same `METRICS_TOKEN` rule as the API's.

A minimal HTTP/1.1 server on asyncio streams (one request per connection): two fixed routes do
not need a framework, and running uvicorn in the worker would take over its signal handling.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field
from http import HTTPStatus

from loguru import logger

from app.config import Settings
from app.metrics import LAST_RELAY, WORKER_REGISTRY, Access, render, scrape_access

READ_TIMEOUT_SECONDS = 5
MAX_HEADER_LINES = 64


@dataclass
class Heartbeat:
    last: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last = time.monotonic()
        LAST_RELAY.set_to_current_time()

    def age(self) -> float:
        return time.monotonic() - self.last


HEARTBEAT = Heartbeat()  # one relay per worker process


def stale_after(settings: Settings) -> float:
    """Longer than one delivery may take (the lease) plus a few relay periods."""
    return settings.outbox_lease_seconds + 3 * settings.outbox_relay_seconds


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]


def _json(status: int, document: dict) -> _Answer:
    return _Answer(status, json.dumps(document).encode(), {"Content-Type": "application/json"})


def answer(settings: Settings, method: str, path: str, headers: dict[str, str]) -> _Answer:
    if method not in ("GET", "HEAD"):
        return _json(405, {"status": 405, "detail": "GET only"})
    if path == "/health":
        age = HEARTBEAT.age()
        healthy = age <= stale_after(settings)
        document = {"status": "ok" if healthy else "stale", "relay_seconds_ago": round(age, 1)}
        return _json(200 if healthy else 503, document)
    if path == "/metrics":
        access = scrape_access(settings, headers.get("authorization"))
        if access is Access.CLOSED:
            return _json(404, {"status": 404, "detail": "Not found"})
        if access is Access.DENIED:
            return _Answer(401, b"", {"WWW-Authenticate": "Bearer"})
        body, extra = render(
            (WORKER_REGISTRY,), accept=headers.get("accept"), accept_encoding=headers.get("accept-encoding")
        )
        return _Answer(200, body, extra)
    return _json(404, {"status": 404, "detail": "Not found"})


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    method, target, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target.split("?", 1)[0], headers


async def _serve(settings: Settings, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            method, path, headers = await _read_request(reader)
        reply = answer(settings, method, path, headers)
        head = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        head += [f"Content-Length: {len(reply.body)}", "Connection: close", "", ""]
        writer.write("\r\n".join(head).encode("latin-1") + (b"" if method == "HEAD" else reply.body))
        await writer.drain()
    except (TimeoutError, ValueError, ConnectionError):
        pass  # a malformed, slow or vanished client gets no answer
    finally:
        writer.close()


async def start_probe(settings: Settings) -> asyncio.Server | None:
    """Listen on `HOST`:`WORKER_METRICS_PORT` when the port is set; the server (close it to stop)."""
    if settings.worker_metrics_port is None:
        return None
    server = await asyncio.start_server(
        lambda reader, writer: _serve(settings, reader, writer), settings.host, settings.worker_metrics_port
    )
    logger.info("worker health and metrics on http://{}:{}", settings.host, settings.worker_metrics_port)
    return server
