"""Loguru setup: coloured lines in development, JSON lines in production, the request id in each."""

import logging
import sys
from contextvars import ContextVar

from loguru import logger

from app.config import Settings

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


def _add_request_id(record) -> None:
    record["extra"].setdefault("request_id", request_id_var.get())


class _InterceptHandler(logging.Handler):
    """Route stdlib logging (uvicorn, arq, sqlalchemy) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(settings: Settings) -> None:
    logger.remove()
    logger.configure(patcher=_add_request_id)
    if settings.is_production:
        logger.add(sys.stderr, level=settings.log_level, serialize=True, diagnose=False)
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
