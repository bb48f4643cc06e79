"""Prometheus metrics: every series the API and the worker export, defined here once, and the
rendering of `/metrics` (backend/README.md, "Metrics", lists them with their labels).

Request series, from one light ASGI middleware: the same as prometheus-fastapi-instrumentator's
defaults, so dashboards keep working: `http_requests_total{method,status,handler}` (status grouped:
`2xx`), `http_request_size_bytes{handler}` and `http_response_size_bytes{handler}` (from
Content-Length), `http_request_duration_seconds{method,handler}` and
`http_request_duration_highr_seconds`. `handler` is the route template (`/api/v1/users/{user_id}`),
`none` for a path no route matched; the router has already matched, so the matched route
(`scope["route"]`) is looked up in a table of templates built once.

Business series are counted where the event happens, in the services (nothing more per request):
transitions once their transaction has committed, refusals when they are raised. The worker's series
live in a registry of their own (`WORKER_REGISTRY`), served on the worker's port, never by the API.

`python -m app serve` runs several processes in prometheus_client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, set up by `app.server`): each process writes its values to mmapped
files there, and a scrape, whichever process answers it, adds them all up.
"""

import gzip
import hmac
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUIET_HANDLERS = ("/metrics", "/health")  # not measured (scrapes and probes)
_HIGHR_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10, 30, 60)

# --- the API's series -------------------------------------------------------------------------------

REQUESTS = Counter(
    "http_requests_total", "Total number of requests by method, status and handler.", ("method", "status", "handler")
)
REQUEST_SIZE = Summary("http_request_size_bytes", "Content length of incoming requests by handler.", ("handler",))
RESPONSE_SIZE = Summary("http_response_size_bytes", "Content length of outgoing responses by handler.", ("handler",))
LATENCY = Histogram(
    "http_request_duration_seconds", "Latency by method and handler.", ("method", "handler"), buckets=(0.1, 0.5, 1)
)
LATENCY_HIGHR = Histogram(
    "http_request_duration_highr_seconds", "Latency with many buckets and no labels.", buckets=_HIGHR_BUCKETS
)
APPOINTMENT_TRANSITIONS = Counter(
    "c3po_appointment_transitions_total",
    "Committed appointment status changes; `from` is `new` for a booking (one per appointment of a series).",
    ("from", "to"),
)
BOOKING_REFUSALS = Counter(
    "c3po_booking_refusals_total", "Bookings refused by the booking service, by problem `code`.", ("code",)
)
RATE_LIMIT_REFUSALS = Counter(
    "c3po_rate_limit_refusals_total", "Requests refused 429 rate_limited, by limit (`register:ip`, ...).", ("limit",)
)
FEED_REQUESTS = Counter(
    "c3po_calendar_feed_requests_total",
    "Calendar feed fetches, by outcome: `200`, `304` (not modified), `404` (unknown URL), `429` (rate limited).",
    ("outcome",),
)
API_PROCESSES = Gauge(
    "c3po_api_processes",
    "API processes serving (each sets 1; summed over live processes).",
    multiprocess_mode="livesum",
)

# --- the worker's series (its own port) ---------------------------------------------------------------

WORKER_REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    WORKER_REGISTRY.register(_collector)
EMAILS_SENT = Counter(
    "c3po_emails_sent_total", "Emails handed to the mail server, by template.", ("template",), registry=WORKER_REGISTRY
)
EMAIL_FAILURES = Counter(
    "c3po_email_failures_total",
    "Failed delivery attempts (each retry counts), by template.",
    ("template",),
    registry=WORKER_REGISTRY,
)
EMAILS_GIVEN_UP = Counter(
    "c3po_emails_given_up_total",
    "Emails given up after OUTBOX_MAX_ATTEMPTS failed attempts, by template.",
    ("template",),
    registry=WORKER_REGISTRY,
)
EMAIL_SEND_SECONDS = Histogram(
    "c3po_email_send_seconds",
    "Time to render and send one email (successful attempts).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=WORKER_REGISTRY,
)
REMINDER_DELAY = Histogram(
    "c3po_reminder_delay_seconds",
    "From a reminder's due time to its email being queued (the cron runs every minute).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600),
    registry=WORKER_REGISTRY,
)
RELAY_PASSES = Counter(
    "c3po_worker_relay_passes_total", "Passes of the outbox relay, by outcome.", ("outcome",), registry=WORKER_REGISTRY
)
LAST_RELAY = Gauge(
    "c3po_worker_last_relay_timestamp_seconds", "When the outbox relay last made progress.", registry=WORKER_REGISTRY
)
QUEUE_RESTARTS = Counter(
    "c3po_worker_queue_restarts_total", "Times arq was started again after Redis dropped it.", registry=WORKER_REGISTRY
)
PENDING_EXPIRED = Counter(
    "c3po_pending_appointments_expired_total",
    "Pending appointments cancelled by the worker because nobody confirmed them in time.",
    registry=WORKER_REGISTRY,
)
CALENDAR_SYNCS = Counter(
    "c3po_calendar_syncs_total",
    "External calendar syncs, by outcome (ok, failed).",
    ("outcome",),
    registry=WORKER_REGISTRY,
)
CALENDAR_SYNC_FAILURES = Counter(
    "c3po_calendar_sync_failures_total",
    "Failed external calendar syncs, by reason (refused, unreachable, status, too_large, unreadable, too_many_events,"
    " push, credentials).",
    ("reason",),
    registry=WORKER_REGISTRY,
)
CALENDAR_SYNC_ALERTS = Counter(
    "c3po_calendar_sync_alerts_total",
    "External calendars that failed CALENDAR_ALERT_FAILURES syncs in a row (their owner and admins were emailed).",
    registry=WORKER_REGISTRY,
)
# Each attempt is one of delivered, failed_attempt (retried), refused (the egress guard said no),
# disabled (the endpoint answered 410, was switched off, or failed for WEBHOOK_DISABLE_AFTER_DAYS);
# given_up counts deliveries whose retry schedule ran out.
WEBHOOK_OUTCOMES = ("delivered", "failed_attempt", "given_up", "refused", "disabled")
WEBHOOK_DELIVERIES = Counter(
    "c3po_webhook_deliveries_total",
    "Webhook delivery attempts by outcome, and deliveries given up.",
    ("outcome",),
    registry=WORKER_REGISTRY,
)
WEBHOOK_SEND_SECONDS = Histogram(
    "c3po_webhook_send_seconds",
    "Time of one webhook attempt's HTTP exchange (any answer).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
    registry=WORKER_REGISTRY,
)

type _Series = tuple[Counter, Summary, Summary, Histogram]
_series: dict[tuple[str, str, str], _Series] = {}  # labelled children, looked up once per label set


def _labelled(method: str, status: str, handler: str) -> _Series:
    key = (method, status, handler)
    series = _series.get(key)
    if series is None:
        series = _series[key] = (
            REQUESTS.labels(method, status, handler),
            REQUEST_SIZE.labels(handler),
            RESPONSE_SIZE.labels(handler),
            LATENCY.labels(method, handler),
        )
    return series


def route_templates(routes: list[BaseRoute]) -> dict[int, str]:
    """Route object id -> its full template. FastAPI keeps an included router's routes with their own
    path (`/users/me`); its `effective_route_contexts()` gives each one with every prefix applied."""
    templates: dict[int, str] = {}
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            for context in contexts():
                original = getattr(context, "original_route", None)
                if original is not None and isinstance(getattr(context, "path", None), str):
                    templates.setdefault(id(original), context.path)
        elif isinstance(getattr(route, "path", None), str):
            templates.setdefault(id(route), route.path)
    return templates


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.templates: dict[int, str] | None = None  # built on the first request, once every route exists

    def _template(self, scope: Scope, root: ASGIApp) -> str:
        route = scope.get("route")  # set by the router on a match
        if route is None:
            return "none"
        if self.templates is None:
            # From the app as it came in: a mounted app (the admin panel) replaces `scope["app"]`
            # with itself on the way down, and a table of its routes would miss every API route.
            self.templates = route_templates(root.routes)  # type: ignore[attr-defined]
        return self.templates.get(id(route)) or getattr(route, "path", None) or "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(QUIET_HANDLERS):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, response_size, handler = 500, 0, "none"
        root = scope["app"]

        async def send_measured(message: Message) -> None:
            nonlocal status, response_size, handler
            if message["type"] == "http.response.start":
                status, response_size = message["status"], _content_length(message.get("headers", []))
                handler = self._template(scope, root)
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        finally:
            elapsed = max(time.perf_counter() - started, 0.0)
            total, request_size, out_size, latency = _labelled(scope["method"], f"{str(status)[0]}xx", handler)
            total.inc()
            request_size.observe(_content_length(scope["headers"]))
            out_size.observe(response_size)
            latency.observe(elapsed)
            LATENCY_HIGHR.observe(elapsed)


# --- what the database says at scrape time --------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Work the worker still owes, measured by the API at scrape time (bounded: `backlog.COUNT_LIMIT`)."""

    outbox_pending: int
    outbox_oldest_seconds: float
    reminders_due: int
    reminder_lag_seconds: float


class _Gauges:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def backlog_collector(backlog: Backlog | None) -> Collector:
    """The scrape-time gauges; with no figures (the database did not answer in time) only `c3po_backlog_up 0`."""
    families = [
        GaugeMetricFamily("c3po_backlog_up", "1 if this scrape measured the backlog.", value=int(bool(backlog)))
    ]
    if backlog is not None:
        families += [
            GaugeMetricFamily(
                "c3po_outbox_backlog", "Emails neither sent nor given up yet.", value=backlog.outbox_pending
            ),
            GaugeMetricFamily(
                "c3po_outbox_oldest_age_seconds",
                "Age of the oldest email neither sent nor given up (0 when none).",
                value=backlog.outbox_oldest_seconds,
            ),
            GaugeMetricFamily(
                "c3po_reminders_due", "Reminders due but not yet queued as emails.", value=backlog.reminders_due
            ),
            GaugeMetricFamily(
                "c3po_reminder_lag_seconds",
                "How long the oldest due reminder has waited to be queued (0 when none).",
                value=backlog.reminder_lag_seconds,
            ),
        ]
    return _Gauges(families)


# --- /metrics ------------------------------------------------------------------------------------------


class Access(Enum):
    ALLOWED = "allowed"
    DENIED = "denied"  # 401: a token is set and this is not it
    CLOSED = "closed"  # 404: production without METRICS_TOKEN


def scrape_access(settings: Settings, authorization: str | None) -> Access:
    token = settings.metrics_token
    if token is None:
        return Access.CLOSED if settings.is_production else Access.ALLOWED
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return Access.ALLOWED
    return Access.DENIED


class _Union:
    def __init__(self, sources: Iterable[Collector]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


class _ApiFiles:
    """Every `serve` process's values, from their files, without the worker's series (defined in every
    process, so their unlabelled ones have zeros in the API's files too)."""

    def __init__(self, path: str) -> None:
        self.files = MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.files.collect() if family.name not in _WORKER_FAMILIES)


_WORKER_FAMILIES = frozenset(family.name for family in WORKER_REGISTRY.collect())


def api_collector() -> Collector:
    """This process's series, or with `serve`'s processes, every process's (read from their files)."""
    path = os.environ.get(MULTIPROCESS_DIR_ENV)
    return _ApiFiles(path) if path else REGISTRY


def render(
    sources: Iterable[Collector], *, accept: str | None, accept_encoding: str | None
) -> tuple[bytes, dict[str, str]]:
    """The exposition (text format, or OpenMetrics when asked for), gzipped when the scraper accepts it."""
    encoder, content_type = choose_encoder(accept or "")
    body = encoder(_Union(sources))  # type: ignore[arg-type]
    headers = {"Content-Type": content_type, "Cache-Control": "no-store"}
    if "gzip" in (accept_encoding or ""):
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return body, headers
