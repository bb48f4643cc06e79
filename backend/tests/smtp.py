"""A real SMTP server for tests: aiosmtpd on a free port, in its own thread, keeping what it accepts.

`hold()` makes it keep each message waiting before the final `250` (the moment SMTP hands over
responsibility), so a test can kill a sender in mid-delivery; a message whose client goes away
before `250` is dropped, as a real server drops it.
"""

import asyncio
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Mailbox:
    """The aiosmtpd handler; runs on the server's thread, read from the test's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self._open = threading.Event()
        self._open.set()
        self.held = 0  # messages waiting for `250` while held

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        if not self._open.is_set():
            self.held += 1
            try:
                while not self._open.is_set():  # cancelled by aiosmtpd when the client disconnects
                    await asyncio.sleep(0.01)
            finally:
                self.held -= 1
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self._lock:
            self._messages.append(message)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)


class SmtpServer:
    def __init__(self, port: int | None = None) -> None:
        self.host = HOST
        self.port = port or free_port()
        self.mailbox = Mailbox()
        self._controller: Controller | None = None

    def start(self) -> "SmtpServer":
        self._controller = Controller(self.mailbox, hostname=self.host, port=self.port, enable_SMTPUTF8=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def hold(self) -> None:
        self.mailbox._open.clear()

    def release(self) -> None:
        self.mailbox._open.set()

    @property
    def messages(self) -> list[EmailMessage]:
        return self.mailbox.messages

    def count_by_message_id(self) -> Counter[str]:
        return Counter(str(message["Message-ID"]) for message in self.messages)

    async def wait_for(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        """At least `count` messages, or AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(messages := self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} emails within {timeout}s, got {len(messages)}")
            await asyncio.sleep(0.05)
        return messages


def text_part(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None, "no text/plain part"
    return body.get_content()


def html_part(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert body is not None, "no text/html part"
    return body.get_content()


@contextmanager
def settings_env(**values: str) -> Iterator[None]:
    """Point the app's settings elsewhere (e.g. `MAIL_PORT`) for a while, then put them back."""
    from app.config import get_settings

    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()
