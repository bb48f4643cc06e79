"""Loguru setup: coloured lines in development, JSON lines in production, the request id in each;
the access line of every request (`access_line`)."""

import atexit
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from multiprocessing import current_process
from types import CodeType, FrameType
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

    def append(self, line: str) -> None:
        """A line below WARNING that did not come through loguru (an access line)."""
        with self._lock:
            self._lines.append(line)

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


_dumps = json.JSONEncoder(ensure_ascii=False).encode  # strings as loguru's `serialize=True` writes them


class _JsonAccessLines:
    """Access lines for production: the JSON line loguru's `serialize=True` writes for `logger.info(message)`
    at the caller, rendered here and handed to the batched sink directly. Loguru builds and serializes a
    whole record per line (~25 µs, more than the rest of a light request's own Python); only the time, the
    message and the request id change from one access line to the next, so the rest is rendered once.
    `tests/unit/test_logging.py` holds the two to the same line.
    """

    _START = datetime.now().astimezone()  # "elapsed" counts from here (loguru's, from its import)

    def __init__(self, sink: BatchedStream) -> None:
        self._sink = sink
        self._sites: dict[CodeType, tuple[str, str, str]] = {}
        self._runner = ""  # the process and thread, rendered in the process and thread that writes
        self._runner_thread = 0
        os.register_at_fork(after_in_child=self._forget_runner)

    def _forget_runner(self) -> None:
        self._runner_thread = 0

    def _site(self, frame: FrameType) -> tuple[str, str, str]:
        """(the `text` line's `name:function:line`, the record's members before and after `message`)."""
        code, line, name = frame.f_code, frame.f_lineno, frame.f_globals.get("__name__")
        file_name = os.path.basename(code.co_filename)
        level = logger.level("INFO")
        before = (
            f'"file": {{"name": {_dumps(file_name)}, "path": {_dumps(code.co_filename)}}}, '
            f'"function": {_dumps(code.co_name)}, '
            f'"level": {{"icon": {_dumps(level.icon)}, "name": "INFO", "no": {level.no}}}, "line": {line}, '
        )
        after = f'"module": {_dumps(os.path.splitext(file_name)[0])}, "name": {_dumps(name)}, '
        return f"{name}:{code.co_name}:{line}", before, after

    def _render_runner(self) -> str:
        thread = threading.current_thread()
        if thread.ident != self._runner_thread:
            self._runner_thread = thread.ident or 0
            self._runner = (
                f'"process": {{"id": {os.getpid()}, "name": {_dumps(current_process().name)}}}, '
                f'"thread": {{"id": {thread.ident}, "name": {_dumps(thread.name)}}}, '
            )
        return self._runner

    def __call__(self, message: str, frame: FrameType) -> None:
        site = self._sites.get(frame.f_code)
        if site is None:
            site = self._sites[frame.f_code] = self._site(frame)
        where, before, after = site
        now = datetime.now().astimezone()
        elapsed = now - self._START
        text = f"{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d} | INFO     | {where} - {message}\n"
        self._sink.append(
            f'{{"text": {_dumps(text)}, "record": {{"elapsed": {{"repr": "{elapsed}", '
            f'"seconds": {elapsed.total_seconds()!r}}}, "exception": null, '
            f'"extra": {{"request_id": {_dumps(request_id_var.get())}}}, {before}"message": {_dumps(message)}, '
            f'{after}{self._render_runner()}"time": {{"repr": "{now}", "timestamp": {now.timestamp()!r}}}}}}}\n'
        )


def _loguru_access(message: str, frame: FrameType) -> None:
    logger.opt(depth=2).info(message)  # recorded at access_line's caller


def _no_access(message: str, frame: FrameType) -> None:
    pass


_access: Callable[[str, FrameType], None] = _loguru_access


def access_line(method: str, path: str, status: int, elapsed_ms: float) -> None:
    """`GET /api/v1/users/me 200 1.2ms` at INFO, with the context's request id, as if the caller logged it."""
    _access(f"{method} {path} {status} {elapsed_ms:.1f}ms", sys._getframe(1))


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
    global _access
    logger.remove()
    logger.configure(patcher=_add_request_id)
    _access = _loguru_access
    if settings.is_production:
        sink = BatchedStream(sys.stderr)
        logger.add(sink, level=settings.log_level, serialize=True, diagnose=False)
        _access = _JsonAccessLines(sink) if logger.level(settings.log_level.upper()).no <= logging.INFO else _no_access
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
