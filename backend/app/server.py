"""`python -m app serve`: the API for production, `WEB_CONCURRENCY` uvicorn processes on one socket.

Uvicorn's own process manager rather than gunicorn: the same server as `dev` and the tests, no
further dependency, and since uvicorn 0.30 it pings its children, replaces one that dies or hangs,
and answers SIGHUP (replace all, one by one), SIGTTIN and SIGTTOU (one more, one fewer).

On SIGTERM or SIGINT each process stops accepting, closes its WebSockets with 1012 (service
restart: clients reconnect, to another process or replica), lets requests in flight finish for up
to `GRACEFUL_TIMEOUT_SECONDS`, cancels what is left, and closes its pools. The parent waits for
them a little longer than that, kills any still running, and exits 0.

Several processes keep their Prometheus values in prometheus_client's multiprocess mode: the
parent empties `PROMETHEUS_MULTIPROC_DIR` (a temporary directory when unset) before the children
start, so each scrape of `/metrics`, answered by any child, adds up every child's files; a child
that leaves is marked dead (its live gauges go, its counters stay, so totals never go back).
"""

import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from loguru import logger
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app.config import Settings
from app.metrics import MULTIPROCESS_DIR_ENV

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
    """Uvicorn's process manager, refusing connections once stopping, bounding the wait at exit, and
    marking each child that leaves (died, replaced, retired) dead for the metrics."""

    _known: frozenset[int] = frozenset()

    def init_processes(self) -> None:
        super().init_processes()
        self._forget_departed()

    def keep_subprocess_alive(self) -> None:  # every half second, after any signal was handled
        super().keep_subprocess_alive()
        self._forget_departed()

    def _forget_departed(self) -> None:
        serving = frozenset(child.pid for child in self.processes if child.pid is not None)
        for pid in self._known - serving:
            mark_process_dead(pid)
        self._known = serving

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
        for pid in self._known:
            mark_process_dead(pid)
        self._known = frozenset()

    @property
    def failed_to_start(self) -> bool:
        return any(child.exitcode == STARTUP_FAILURE for child in self.processes)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Run until SIGTERM or SIGINT; the exit code (0 after a graceful stop)."""
    workers = workers or settings.web_concurrency
    config = uvicorn_config(settings, host=host or settings.host, port=port or settings.port, workers=workers)
    logger.info("serving on http://{}:{} with {} process{}", config.host, config.port, workers, "es" * (workers > 1))
    if workers > 1:
        with _multiprocess_metrics():
            supervisor = _Supervisor(config, sockets=[config.bind_socket()])
            supervisor.run()
        return STARTUP_FAILURE if supervisor.failed_to_start else 0
    # One process: uvicorn serves here. After its graceful stop it raises the signal it caught
    # again, to end the way that signal would; for SIGTERM that would be a "killed" exit status.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else STARTUP_FAILURE


@contextmanager
def _multiprocess_metrics() -> Iterator[Path]:
    """`PROMETHEUS_MULTIPROC_DIR` emptied (or a new temporary one), in the environment the children inherit."""
    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="c3po-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # a previous run's values
        stale.unlink()
    os.environ[MULTIPROCESS_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        if not given:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            shutil.rmtree(path, ignore_errors=True)
