"""One settings object for the whole backend, read from the environment (and `.env`)."""

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from app.secret_settings import MIN_SECRET_KEY_LENGTH, PUBLISHED_KEY_DIGESTS, SecretFiles, development_key, key_digest
from app.utils.netaddr import dns_server

BACKEND_DIR = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    # Signs access tokens (and seals refresh successors). Unset: in development a key made once
    # and kept under DATA_DIR; anywhere else start-up is refused. Rotation: the new key here, the
    # old one in PREVIOUS_SECRET_KEYS (still verifies, never signs) until its tokens have expired.
    secret_key: str = ""
    previous_secret_keys: Annotated[list[str], NoDecode] = []
    log_level: str = "INFO"
    data_dir: Path = BACKEND_DIR / ".data"

    # Unset in development means "start embedded servers" (see app/embedded.py).
    database_url: str | None = None
    redis_url: str | None = None
    # REDIS_URL is then one node of a Redis Cluster (the client finds the others); see backend/README.md.
    redis_cluster: bool = False
    redis_pubsub_url: str | None = None  # events' pub/sub: a plain connection to one node (unset: REDIS_URL)
    arq_redis_url: str | None = None  # the job queue: one Redis, never a cluster (unset: REDIS_URL)
    # How long one Redis command (or connecting) may take before the request answers 503 `redis_unavailable`.
    redis_timeout_seconds: float = Field(default=2, gt=0, le=60)
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
    # This API as the outside world reaches it: the calendar feed URLs handed to users start with it.
    public_api_url: str = "http://localhost:8000"

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
    # Manage links (`/api/v1/manage/{token}`, no sign-in): requests per client IP, and per link.
    manage_requests_per_ip: str = "60/minute"
    manage_requests_per_token: str = "30/minute"

    cancellation_min_notice_hours: int = 24
    # A pending booking (its service needs confirmation) not confirmed within this many hours of being
    # made, or by its start if that comes first, is cancelled by the worker (app/services/booking/expiry.py).
    pending_expiry_hours: int = Field(default=48, ge=1)
    # A client booking for themself may hold at most this many pending or confirmed appointments
    # starting after now, of any service (app/services/booking/limits.py); unset: no limit.
    max_live_appointments_per_client: int | None = Field(default=None, ge=1, le=10000)
    # Waitlist (app/services/booking/waitlist.py): how long a freed slot is held for the waiter it is
    # offered to (minutes, fractions allowed), the longest window of dates one may wait for, and how many
    # open entries (waiting or holding an offer) a client may have at once.
    waitlist_hold_minutes: float = Field(default=30, gt=0, le=1440)
    waitlist_max_days: int = Field(default=90, ge=1, le=366)
    waitlist_entries_per_client: int = Field(default=20, ge=1, le=1000)
    slot_step_minutes: int | None = None  # unset: slots step by the service's duration
    reminder_offsets: list[int] = Field(default_factory=lambda: [1440, 60])

    # Calendar feeds (app/services/integrations/feeds.py): fetches allowed per feed URL, how often
    # calendar apps are asked to fetch again, and how long a cancelled appointment stays in the feed
    # as STATUS:CANCELLED (so subscribed apps remove it) before it is left out.
    feed_requests_per_token: str = "60/hour"
    feed_refresh_minutes: int = Field(default=60, ge=5, le=1440)
    feed_cancelled_keep_days: int = Field(default=30, ge=0, le=365)

    outbox_max_attempts: int = 12
    outbox_relay_seconds: float = 5
    outbox_backoff_seconds: float = 2  # retry after 2 s, 4 s, 8 s, ... up to the maximum
    outbox_backoff_max_seconds: float = 300
    outbox_lease_seconds: float = 60  # a claimed row is another worker's to take once this has passed
    # The worker's own HTTP port: /metrics and /health (on HOST); unset: none (backend/README.md, "Metrics").
    worker_metrics_port: int | None = None

    # Retention (app/services/retention.py): days rows are kept once they have served; 0 = for ever.
    # The worker purges daily at RETENTION_HOUR (UTC), RETENTION_BATCH_SIZE rows per transaction.
    retention_sent_email_days: int = 30
    retention_failed_email_days: int = 90
    retention_action_token_days: int = 7
    retention_reminder_days: int = 30
    retention_audit_days: int = 365
    retention_unverified_account_days: int = 30
    retention_batch_size: int = 1000
    retention_hour: int = Field(default=3, ge=0, le=23)

    # Outbound HTTP to users' URLs (webhooks, calendars; app/services/integrations/egress.py): only
    # public addresses, plus these networks (CIDR). Unset: loopback and private ranges in development,
    # none elsewhere. EGRESS_DNS_SERVERS (`ip[:port]`, comma-separated): resolve there, not via the system.
    egress_allowed_networks: Annotated[list[str] | None, NoDecode] = None
    egress_dns_servers: Annotated[list[str], NoDecode] = []
    egress_timeout_seconds: float = 15
    egress_ca_file: str | None = None  # PEM bundle that HTTPS peers are verified against (unset: the system's)

    # External calendars (app/services/integrations/calendar_sync.py): the worker syncs each connection
    # this often; a fetched calendar may be this large and expand to this many events in the window
    # (now - 1 day .. the booking horizon), else the sync fails and the last good blocks stay; after
    # this many failures in a row the staff member and the admins are emailed once.
    calendar_sync_minutes: int = Field(default=10, ge=1, le=1440)
    calendar_max_bytes: int = Field(default=2_000_000, ge=1024)
    calendar_max_events: int = Field(default=5000, ge=1)
    calendar_alert_failures: int = Field(default=3, ge=1)
    calendar_connections_per_staff: int = Field(default=10, ge=1, le=100)
    # Webhooks (app/services/integrations/webhooks.py, Standard Webhooks 1.0). The pause before each
    # retry, in seconds (comma-separated; default the specification's 5 s, 5 min, 30 min, 2 h, 5 h,
    # 10 h, 10 h, each with up to 10 % jitter); given up after the last one fails.
    webhook_retry_schedule: Annotated[list[float], NoDecode] = [5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_timeout_seconds: float = 15  # one attempt's whole exchange
    webhook_secret_overlap_hours: float = 24  # after a rotation the old secret signs too, this long
    webhook_disable_after_days: float = 5  # an endpoint failing without a success this long is disabled

    # Bearer token for /metrics (API and worker). Unset: open outside production, closed (404) in production.
    metrics_token: str | None = None
    sentry_dsn: str | None = None

    # The admin panel at /admin (app/admin): its signed session cookie lives this long, at most.
    admin_session_minutes: int = 30
    admin_require_totp: bool = False  # admins must have a TOTP second factor to open /admin
    totp_issuer: str = "c3po"  # the name authenticator apps show beside the account

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_sources = [s for s in (env_settings, dotenv_settings) if isinstance(s, EnvSettingsSource)]
        files = SecretFiles(settings_cls, *env_sources)
        return init_settings, files, env_settings, dotenv_settings, file_secret_settings

    @field_validator("previous_secret_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Commas or whitespace between keys (a file may hold one per line)."""
        if isinstance(value, str):
            return [key for key in re.split(r"[\s,]+", value) if key]
        return value

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "egress_allowed_networks",
        "egress_dns_servers",
        "webhook_retry_schedule",
        mode="before",
    )
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

    @field_validator("egress_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for network in value or []:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or len(value) > 20 or any(delay < 0 for delay in value):
            raise ValueError("1 to 20 delays in seconds, none negative")
        return value

    @field_validator("egress_dns_servers")
    @classmethod
    def _dns_servers(cls, value: list[str]) -> list[str]:
        for server in value:
            dns_server(server)
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

    @field_validator(
        "retention_sent_email_days",
        "retention_failed_email_days",
        "retention_action_token_days",
        "retention_reminder_days",
        "retention_audit_days",
        "retention_unverified_account_days",
    )
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 (keep for ever) or more days")
        return value

    @field_validator(
        "web_concurrency",
        "outbox_lease_seconds",
        "graceful_timeout_seconds",
        "retention_batch_size",
        "webhook_timeout_seconds",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _signing_keys(self) -> "Settings":
        if not self.secret_key:
            if self.environment != "development":
                raise ValueError(
                    f"SECRET_KEY is not set (ENVIRONMENT={self.environment}): set SECRET_KEY, or SECRET_KEY_FILE"
                    f" naming a file that holds it, to a random value of {MIN_SECRET_KEY_LENGTH}+ characters"
                    " (e.g. `openssl rand -hex 32`). Only development makes one of its own."
                )
            try:
                self.secret_key = development_key(self.data_dir)
            except OSError as exc:
                raise ValueError(
                    f"SECRET_KEY is not set and no development key can be kept in {self.data_dir}"
                    f" ({exc.strerror or exc}): set SECRET_KEY or SECRET_KEY_FILE"
                ) from None
        keys = [("SECRET_KEY", self.secret_key)] + [("PREVIOUS_SECRET_KEYS", k) for k in self.previous_secret_keys]
        for name, key in keys:
            if len(key) < MIN_SECRET_KEY_LENGTH:
                raise ValueError(f"{name}: a key must be a random value of {MIN_SECRET_KEY_LENGTH}+ characters")
            if key_digest(key) in PUBLISHED_KEY_DIGESTS:
                raise ValueError(f"{name}: this key was published in c3po's source code; generate a new one")
        return self

    @model_validator(mode="after")
    def _servers_in_production(self) -> "Settings":
        if self.environment == "production" and not (self.database_url and self.redis_url):
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
