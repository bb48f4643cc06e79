"""Sentry in the worker: a real worker process with `SENTRY_DSN` pointing at a local HTTP server that
stores what the SDK sends. An email the mail server refuses for good is an error event (sent with
sentry-sdk's arq integration enabled), scrubbed like the API's: the recipient's address is not in it."""

import asyncio
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app.database import unit_of_work
from app.services.messaging.outbox import queue_email
from tests.e2e.conftest import Stack
from tests.e2e.test_email_faults import eventually
from tests.smtp import HOST

RECIPIENT = "ada.private@example.org"


class SentryServer:
    """Accepts envelopes at `/api/<project>/envelope/` and keeps their items."""

    def __init__(self) -> None:
        self.items: list[tuple[dict, dict]] = []  # (item header, payload)
        lock = threading.Lock()
        items = self.items

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.split(b"\n")
                with lock:
                    for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                        items.append((json.loads(header), json.loads(payload) if payload.strip() else {}))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.dsn = f"http://public-key@{HOST}:{self._server.server_address[1]}/1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [payload for header, payload in list(self.items) if header.get("type") == "event"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def refuse_recipients(server, session, envelope, address, rcpt_options) -> str:
    return "550 5.1.1 No such mailbox here"


async def test_an_email_given_up_reaches_sentry_without_the_address(stack: Stack):
    sentry = SentryServer()
    stack.smtp.mailbox.handle_RCPT = refuse_recipients  # type: ignore[attr-defined]
    stack.env.update(SENTRY_DSN=sentry.dsn, OUTBOX_MAX_ATTEMPTS="1", ENVIRONMENT="production")
    worker = stack.start_worker()
    try:
        async with unit_of_work() as session:
            context = {
                "full_name": "Ada",
                "link": "https://app.test/verify-email?token=t0k3n-value",
                "expires_hours": 1,
            }
            await queue_email(session, to=RECIPIENT, template="verify_email", locale="en", context=context)

        await eventually(lambda: sentry.events(), 60, "an event sent to Sentry")
        await asyncio.sleep(0.5)  # anything sent with it
    finally:
        worker.stop()
        sentry.stop()

    assert RECIPIENT in worker.log()  # the error did name the address: the scrubbing removed it from Sentry
    (event, *_) = [event for event in sentry.events() if "given up" in json.dumps(event)]
    assert event["level"] == "error" and event["environment"] == "production"
    assert "sentry.python" in event["sdk"]["name"] and "arq" in event["sdk"]["integrations"]
    everything = json.dumps(sentry.items)
    assert RECIPIENT not in everything and "[email]" in everything
    assert "t0k3n-value" not in everything
