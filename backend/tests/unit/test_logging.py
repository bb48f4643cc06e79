"""The batched log sink: lines leave together, warnings at once, nothing is lost on removal."""

import io

from loguru import logger

from app.logging import BatchedStream


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
