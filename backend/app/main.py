"""The application factory: middleware, routers, problem handlers, lifespan."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.utils import generate_unique_id
from fastapi_offline import FastAPIOffline

from app.admin import install_admin
from app.api import (
    API_PREFIX,
    appointments,
    audit,
    auth,
    availability,
    calendar_connections,
    calendar_feeds,
    health,
    manage,
    metrics,
    resources,
    series,
    services,
    staff,
    users,
    waitlist,
    webhooks,
    ws,
)
from app.api.admission import AdmissionLimit
from app.api.db_timeouts import install_db_timeout_handlers
from app.api.deps import require_body_media_type
from app.api.openapi import install_openapi
from app.api.problems import install_problem_handlers
from app.config import Settings, get_settings
from app.database import dispose_engine
from app.logging import setup_logging
from app.metrics import API_PROCESSES, MetricsMiddleware
from app.middleware import REQUEST_ID_HEADER, BodySizeLimitMiddleware, RequestContextMiddleware
from app.redis import close_redis, get_redis, warn_unless_noeviction
from app.sentry import init_sentry
from app.services.messaging.events import close_hub
from app.services.messaging.outbox import close_arq_pool
from app.services.rate_limit import reset_limiter


def _operation_id(route: APIRoute) -> str:
    """Every route names its `operation_id=` (`auth-login`, ...): it names the generated client's
    method, so it must not follow a Python rename."""
    if not route.include_in_schema:  # /docs, /metrics: not in the schema, no client method
        return generate_unique_id(route)
    raise RuntimeError(f"{route.methods} {route.path} ({route.name}) has no explicit operation_id")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # Everything built so far (modules, routes, models) lives as long as the process: keep it out of
    # the collector's scans, which otherwise walk it again and again under request load.
    gc.freeze()
    API_PROCESSES.set(1)
    if get_settings().redis_url:
        await warn_unless_noeviction(get_redis(), "app")
    yield
    await close_hub()
    await close_arq_pool()
    await close_redis()
    reset_limiter()
    await dispose_engine()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging(settings)
    init_sentry(settings)
    # FastAPIOffline: /docs and /redoc with Swagger UI and ReDoc served from the app, no CDN.
    app = FastAPIOffline(
        title="c3po booking API",
        version="1.0.0",
        summary="Book time with specialists: accounts, services, availability, appointments.",
        lifespan=lifespan,
        dependencies=[Depends(require_body_media_type)],
        generate_unique_id_function=_operation_id,
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
    )
    install_problem_handlers(app)
    install_db_timeout_handlers(app)

    # Each router straight into the app, not through a parent `/api/v1` router: FastAPI matches an
    # included router's routes again at every level of nesting, on every request.
    for module in (
        auth,
        users,
        services,
        resources,
        staff,
        calendar_connections,
        availability,
        appointments,
        series,
        manage,
        calendar_feeds,
        audit,
        webhooks,
        waitlist,
        ws,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(metrics.router)
    install_admin(app, settings)
    install_openapi(app)

    # Not FastAPI's `max_body_size`: its 413 is plain text sent from outside every user middleware.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)  # inside RequestContextMiddleware: its 500s are counted too
    app.add_middleware(RequestContextMiddleware, hsts=settings.is_production)
    app.add_middleware(AdmissionLimit, settings=settings)  # before the stack: a refusal costs next to nothing
    # Outermost, so every answer a browser may read carries CORS headers: the admission limit's 503s
    # and the last-resort 500s too (a cross-origin answer without them reaches the page as a network error).
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", REQUEST_ID_HEADER],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After", "Idempotent-Replayed"],
        max_age=600,
    )
    return app


def __getattr__(name: str) -> FastAPI:
    """`uvicorn app.main:app` works too: the app is built on first access, after settings are in place."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
