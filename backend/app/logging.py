"""Loguru setup: coloured lines in development, JSON lines in production, the request id in each."""

import atexit
import logging
import sys
import threading
from contextvars import ContextVar
from typing import TextIO

from loguru import logger

from app.config import Settings
from app.utils.redact import redact_text

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


def _add_request_id(record) -> None:
    record["extra"].setdefault("request_id", request_id_var.get())


FLUSH_SECONDS = 0.2


class BatchedStream:
    """A loguru sink that writes lines in batches: one write per FLUSH_SECONDS instead of one per line
    (an access line per request made the write the costliest part of logging). A warning or worse is
    written at once, together with what came before it; the rest is at most FLUSH_SECONDS late.
    """

    def __init__(self, stream: TextIO, interval: float = FLUSH_SECONDS) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._flush_periodically, args=(interval,), daemon=True)
        self._thread.start()
        atexit.register(self.write_out)

    def write(self, message) -> None:  # loguru calls this once per formatted line
        with self._lock:
            self._lines.append(message)
        if message.record["level"].no >= logging.WARNING:
            self.write_out()

    def write_out(self) -> None:
        """Not named `flush`: loguru would call that after every line."""
        with self._lock:
            lines, self._lines = self._lines, []
            if lines:
                self._stream.write("".join(lines))
                self._stream.flush()

    def stop(self) -> None:  # loguru calls this when the sink is removed
        self._stopped.set()
        self._thread.join()
        self.write_out()
        atexit.unregister(self.write_out)

    def _flush_periodically(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            self.write_out()


class _InterceptHandler(logging.Handler):
    """Route stdlib logging (uvicorn, arq, sqlalchemy) through loguru, with secrets masked: uvicorn
    logs a WebSocket's path with its query string (`?token=<access token>`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, redact_text(record.getMessage()))


def setup_logging(settings: Settings) -> None:
    logger.remove()
    logger.configure(patcher=_add_request_id)
    if settings.is_production:
        logger.add(BatchedStream(sys.stderr), level=settings.log_level, serialize=True, diagnose=False)
    else:
        fmt = (
            "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra[request_id]}</cyan> {name}:{line} - <level>{message}</level>"
        )
        logger.add(
            sys.stderr,
            level=settings.log_level,
            format=fmt,
            colorize=None if settings.environment == "development" else False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq"):
        logging.getLogger(name).handlers = [_InterceptHandler()]
        logging.getLogger(name).propagate = False
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
