"""The batched log sink: lines leave together, warnings at once, nothing is lost on removal; access lines."""

import io
import json
import secrets
import sys

from loguru import logger

from app.config import Settings, get_settings
from app.logging import BatchedStream, _add_request_id, _JsonAccessLines, access_line, request_id_var, setup_logging


def _sink(stream: io.StringIO, interval: float = 3600) -> int:
    return logger.add(BatchedStream(stream, interval=interval), format="{level} {message}", level="INFO")


class TestBatchedStream:
    def test_lines_wait_for_the_next_batch(self):
        stream = io.StringIO()
        sink = _sink(stream)
        try:
            logger.info("one")
            logger.info("two")
            assert stream.getvalue() == ""
        finally:
            logger.remove(sink)
        assert stream.getvalue() == "INFO one\nINFO two\n"  # written out when the sink is removed

    def test_a_warning_is_written_at_once_after_what_came_before(self):
        stream = io.StringIO()
        sink = _sink(stream)
        try:
            logger.info("before")
            logger.warning("trouble")
            assert stream.getvalue() == "INFO before\nWARNING trouble\n"
        finally:
            logger.remove(sink)

    def test_lines_are_written_within_the_interval(self):
        stream = io.StringIO()
        batched = BatchedStream(stream, interval=0.01)
        sink = logger.add(batched, format="{message}", level="INFO")
        try:
            logger.info("soon")
            batched._stopped.wait(0.5)  # the flushing thread runs every 10 ms meanwhile
            assert stream.getvalue() == "soon\n"
        finally:
            logger.remove(sink)


def _log_here(log) -> None:
    log()  # both writers below log from this line


def _without_times(line: str) -> dict:
    entry = json.loads(line)
    record = entry["record"]
    assert entry["text"].startswith(record["time"]["repr"][:23].replace("T", " "))
    entry["text"] = entry["text"][23:]
    for member in ("elapsed", "time"):
        record[member] = sorted(record[member])
    return entry


class TestAccessLines:
    def test_the_fast_line_is_the_line_loguru_would_write(self):
        stream = io.StringIO()
        batched = BatchedStream(stream, interval=3600)
        sink = logger.add(batched, level="INFO", serialize=True, diagnose=False)
        fast = _JsonAccessLines(batched)
        logger.configure(patcher=_add_request_id)  # as setup_logging does
        message = 'GET /api/v1/odd "päth"\\ 200 1.2ms'
        token = request_id_var.set("req-1")
        try:
            _log_here(lambda: logger.opt(depth=1).info(message))
            _log_here(lambda: fast(message, sys._getframe(1)))
        finally:
            request_id_var.reset(token)
            logger.remove(sink)
        by_loguru, by_us = stream.getvalue().splitlines()
        assert _without_times(by_us) == _without_times(by_loguru)
        assert json.loads(by_us)["record"]["extra"] == {"request_id": "req-1"}

    def test_production_writes_them_through_the_batched_sink_at_info_only(self, monkeypatch):
        monkeypatch.setattr(sys, "stderr", stderr := io.StringIO())
        settings = Settings(
            environment="production", secret_key=secrets.token_urlsafe(32), database_url="x", redis_url="y"
        )
        try:
            setup_logging(settings.model_copy(update={"log_level": "INFO"}))
            access_line("GET", "/api/v1/users/me", 200, 1.25)
            setup_logging(settings.model_copy(update={"log_level": "WARNING"}))
            access_line("GET", "/api/v1/users/me", 200, 1.25)
        finally:
            setup_logging(get_settings())
        lines = stderr.getvalue().splitlines()
        assert [json.loads(line)["record"]["message"] for line in lines] == ["GET /api/v1/users/me 200 1.2ms"]
        assert json.loads(lines[0])["record"]["name"] == __name__  # the caller's, as loguru records it

    def test_elsewhere_loguru_writes_them_as_the_caller(self):
        stream = io.StringIO()
        sink = logger.add(stream, level="INFO", format="{name}:{function} {message}")
        try:
            access_line("POST", "/api/v1/auth/login", 401, 12.34)
        finally:
            logger.remove(sink)
        assert (
            stream.getvalue()
            == f"{__name__}:test_elsewhere_loguru_writes_them_as_the_caller POST /api/v1/auth/login 401 12.3ms\n"
        )
