"""One settings object for the whole backend, read from the environment (and `.env`)."""

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SECRET_KEY = "change-me-in-production-this-is-only-for-development"
BACKEND_DIR = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    secret_key: str = DEFAULT_SECRET_KEY
    log_level: str = "INFO"
    data_dir: Path = BACKEND_DIR / ".data"

    # Unset in development means "start embedded servers" (see app/embedded.py).
    database_url: str | None = None
    redis_url: str | None = None
    # REDIS_URL is then one node of a Redis Cluster (the client finds the others); see backend/README.md.
    redis_cluster: bool = False
    redis_pubsub_url: str | None = None  # events' pub/sub: a plain connection to one node (unset: REDIS_URL)
    arq_redis_url: str | None = None  # the job queue: one Redis, never a cluster (unset: REDIS_URL)
    # Per process (API or worker); budget them against max_connections: backend/README.md.
    db_pool_size: int = 10
    db_max_overflow: int = 10
    # Per connection, 0 turns one off. Above the idempotency lock wait (10 s) on purpose.
    db_statement_timeout_seconds: float = 15
    db_lock_timeout_seconds: float = 5
    db_idle_in_transaction_timeout_seconds: float = 30

    # `python -m app serve`: the API for production (backend/README.md, "Running in production").
    host: str = "127.0.0.1"
    port: int = 8000
    web_concurrency: int = 1  # API processes; scale out with replicas or this, within the pool budget
    graceful_timeout_seconds: float = 20  # in-flight requests get this long after SIGTERM

    # Overload answers 503 `server_busy` within these bounds instead of queueing (app/api/admission.py).
    db_pool_timeout_seconds: float = 2  # wait for a pooled connection
    max_in_flight_requests: int = 32  # per process; /health* and /metrics are not counted
    request_queue_timeout_seconds: float = 0.5  # wait for an in-flight slot
    password_hash_concurrency: int = 1  # argon2 hashes at once per process (each takes a core)
    # 24 waiting × ~35 ms a hash ≈ 1 s: a burst of sign-ins (a class starting) waits, a flood is refused.
    password_hash_max_waiting: int = 24
    password_hash_queue_timeout_seconds: float = 2

    mail_server: str = "127.0.0.1"
    mail_port: int = 1025
    mail_from: str = "c3po <no-reply@c3po.local>"
    mail_username: str = ""
    mail_password: str = ""
    mail_starttls: bool = False
    mail_ssl_tls: bool = False
    mail_timeout_seconds: int = 10
    frontend_url: str = "http://localhost:5173"

    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:5173"]
    trusted_proxies: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = 1024 * 1024

    jwt_issuer: str = "c3po"
    jwt_audience: str = "c3po-api"
    access_token_expire_minutes: int = 15
    refresh_token_expire_days: int = 14
    refresh_reuse_grace_seconds: float = 10  # a rotated refresh token still answers its successor this long
    verify_email_token_expire_hours: int = 48
    password_reset_token_expire_minutes: int = 60

    login_failures_per_email: str = "5/15 minutes"
    login_attempts_per_ip: str = "30/minute"
    sensitive_requests_per_ip: str = "10/minute"
    sensitive_requests_per_email: str = "5/hour"
    availability_requests_per_ip: str = "120/minute"  # public and the costliest read

    cancellation_min_notice_hours: int = 24
    slot_step_minutes: int | None = None  # unset: slots step by the service's duration
    reminder_offsets: list[int] = Field(default_factory=lambda: [1440, 60])

    outbox_max_attempts: int = 12
    outbox_relay_seconds: float = 5
    outbox_backoff_seconds: float = 2  # retry after 2 s, 4 s, 8 s, ... up to the maximum
    outbox_backoff_max_seconds: float = 300
    outbox_lease_seconds: float = 60  # a claimed row is another worker's to take once this has passed
    # The worker's own HTTP port: /metrics and /health (on HOST); unset: none (backend/README.md, "Metrics").
    worker_metrics_port: int | None = None

    # Bearer token for /metrics (API and worker). Unset: open outside production, closed (404) in production.
    metrics_token: str | None = None
    sentry_dsn: str | None = None

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        """Accept `a,b` as well as a JSON list, so the variables are easy to set by hand."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("metrics_token", "sentry_dsn", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("METRICS_TOKEN must be at least 16 characters (a random string)")
        return value

    @field_validator("web_concurrency", "outbox_lease_seconds", "graceful_timeout_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> "Settings":
        if self.environment == "production":
            if self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32:
                raise ValueError("SECRET_KEY must be set to a random value of 32+ characters in production")
            if not self.database_url or not self.redis_url:
                raise ValueError("DATABASE_URL and REDIS_URL are required in production")
        return self

    @model_validator(mode="after")
    def _queue_outside_the_cluster(self) -> "Settings":
        if self.redis_cluster and self.redis_url and not self.arq_redis_url:
            raise ValueError("REDIS_CLUSTER needs ARQ_REDIS_URL: arq's queue runs on a single Redis, not a cluster")
        return self

    @property
    def pubsub_redis_url(self) -> str | None:
        return self.redis_pubsub_url or self.redis_url

    @property
    def queue_redis_url(self) -> str | None:
        return self.arq_redis_url or self.redis_url

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


@lru_cache
def get_settings() -> Settings:
    return Settings()
