"""Prometheus request metrics from one light ASGI middleware (prometheus_client directly).

The same series as prometheus-fastapi-instrumentator's defaults, so dashboards keep working:
`http_requests_total{method,status,handler}` (status grouped: `2xx`), `http_request_size_bytes{handler}` and
`http_response_size_bytes{handler}` (from Content-Length), `http_request_duration_seconds{method,handler}`
and `http_request_duration_highr_seconds`. `handler` is the route template (`/api/v1/users/{user_id}`),
`none` for a path no route matched. The instrumentator found the template by matching every route again
per request; the router has already matched, so the matched route (`scope["route"]`) is looked up in a
table of templates built once.
"""

import time

from prometheus_client import Counter, Histogram, Summary
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

QUIET_HANDLERS = ("/metrics", "/health")  # not measured (scrapes and probes)
_HIGHR_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10, 30, 60)

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

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")  # set by the router on a match
        if route is None:
            return "none"
        if self.templates is None:
            self.templates = route_templates(scope["app"].routes)
        return self.templates.get(id(route)) or getattr(route, "path", None) or "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(QUIET_HANDLERS):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, response_size, handler = 500, 0, "none"

        async def send_measured(message: Message) -> None:
            nonlocal status, response_size, handler
            if message["type"] == "http.response.start":
                status, response_size = message["status"], _content_length(message.get("headers", []))
                handler = self._template(scope)
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
