"""A local SMTP server for development and tests: every message is saved as an `.eml` file.

Nothing is relayed anywhere. Each message is logged with its subject and the links it carries,
so the verification or reset link of a dev account is one click away in the terminal.
"""

import itertools
import logging
import re
import socket
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from loguru import logger

# aiosmtpd logs a warning about its own legacy attribute whenever a client logs in.
logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())

_LINK = re.compile(r"https?://[^\s<>\"')]+")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _can_bind(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def extract_links(message: EmailMessage) -> list[str]:
    """Every http(s) link in the text and HTML parts, in order of appearance, without repeats."""
    links: dict[str, None] = {}
    for part in message.walk():
        if part.get_content_maintype() == "text" and not part.is_attachment():
            for link in _LINK.findall(part.get_content()):
                links.setdefault(link.rstrip(".,;:!?").replace("&amp;", "&"), None)
    return list(links)


class _SaveToDisk:
    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self._counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        content: bytes = envelope.original_content or envelope.content
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-{next(self._counter)}.eml"
        path = self.mail_dir / name
        partial = path.with_suffix(".part")  # renamed when complete, so readers never see half a message
        partial.write_bytes(content)
        partial.rename(path)
        message = message_from_bytes(content, policy=policy.default)
        links = extract_links(message)  # type: ignore[arg-type]
        logger.info(
            "mail to {} | {} | saved {}{}",
            ", ".join(envelope.rcpt_tos),
            message["subject"],
            path,
            "".join(f"\n    {link}" for link in links),
        )
        return "250 Message accepted for delivery"


def _accept_any_login(*_args) -> AuthResult:
    return AuthResult(success=True)


class MailCatcher:
    """`MailCatcher(dir).start()` listens on `host:port`, or on a free port if that one is taken (or 0)."""

    def __init__(self, mail_dir: Path, host: str = "127.0.0.1", port: int = 1025) -> None:
        self.mail_dir = mail_dir
        self.host = host
        self.port = port
        self._controller: Controller | None = None

    def _controller_for(self, port: int) -> Controller:
        return Controller(
            _SaveToDisk(self.mail_dir),
            hostname=self.host,
            port=port,
            # Accept whatever credentials a client sends, over plain text: this server only saves files.
            authenticator=_accept_any_login,
            auth_require_tls=False,
        )

    def start(self) -> "MailCatcher":
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        if not self.port or not _can_bind(self.host, self.port):
            self.port = free_port(self.host)
        self._controller = self._controller_for(self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> "MailCatcher":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
