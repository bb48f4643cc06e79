"""`python -m app serve`: the API for production, `WEB_CONCURRENCY` uvicorn processes on one socket.

Uvicorn's own process manager rather than gunicorn: the same server as `dev` and the tests, no
further dependency, and since uvicorn 0.30 it pings its children, replaces one that dies or hangs,
and answers SIGHUP (replace all, one by one), SIGTTIN and SIGTTOU (one more, one fewer).

On SIGTERM or SIGINT each process stops accepting, closes its WebSockets with 1012 (service
restart: clients reconnect, to another process or replica), lets requests in flight finish for up
to `GRACEFUL_TIMEOUT_SECONDS`, cancels what is left, and closes its pools. The parent waits for
them a little longer than that, kills any still running, and exits 0.
"""

import logging
import signal
import time

import uvicorn
from fastapi import FastAPI
from loguru import logger
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import Settings

APP = "app.server:create_served_app"
EXIT_SLACK_SECONDS = 5  # beyond the grace period: closing pools, flushing logs


def create_served_app() -> FastAPI:
    """The app (app.main.create_app) without uvicorn's access line, which would repeat the app's own
    (app.middleware logs each request with its id) at a cost on every request."""
    from app.main import create_app

    app = create_app()
    access = logging.getLogger("uvicorn.access")
    access.handlers, access.propagate = [], False
    return app


def uvicorn_config(settings: Settings, *, host: str, port: int, workers: int) -> uvicorn.Config:
    proxies = settings.trusted_proxies
    return uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # X-Forwarded-For/-Proto only from TRUSTED_PROXIES, the list app.api.deps.get_client_ip
        # believes too (the two agree: the nearest untrusted hop is the client).
        proxy_headers=bool(proxies),
        forwarded_allow_ips=",".join(proxies) or None,
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_seconds)),
        access_log=False,  # the app logs each request itself, with its request id
        log_config=None,  # and routes uvicorn's logging through loguru (app.logging)
        server_header=False,
    )


class _Supervisor(Multiprocess):
    """Uvicorn's process manager, refusing connections once stopping and bounding the wait at exit."""

    def terminate_all(self) -> None:
        # The children close their copies of the listening socket; ours would keep accepting into
        # the backlog connections no one will serve: a client would wait instead of trying elsewhere.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        deadline = time.monotonic() + self.config.timeout_graceful_shutdown + EXIT_SLACK_SECONDS
        for child in self.processes:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                logger.warning("API process {} did not stop within the grace period; killing it", child.pid)
                child.kill()
                child.process.join()

    @property
    def failed_to_start(self) -> bool:
        return any(child.exitcode == STARTUP_FAILURE for child in self.processes)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Run until SIGTERM or SIGINT; the exit code (0 after a graceful stop)."""
    workers = workers or settings.web_concurrency
    config = uvicorn_config(settings, host=host or settings.host, port=port or settings.port, workers=workers)
    logger.info("serving on http://{}:{} with {} process{}", config.host, config.port, workers, "es" * (workers > 1))
    if workers > 1:
        supervisor = _Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
        return STARTUP_FAILURE if supervisor.failed_to_start else 0
    # One process: uvicorn serves here. After its graceful stop it raises the signal it caught
    # again, to end the way that signal would; for SIGTERM that would be a "killed" exit status.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
