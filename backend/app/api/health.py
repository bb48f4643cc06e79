"""Liveness and dependency checks for load balancers and orchestrators (unversioned)."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.database import get_engine
from app.redis import get_redis
from app.schemas.health import DatabaseDown, DatabaseUp, HealthOk, RedisDown, RedisUp

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 1.5


async def _check(name: str, probe) -> JSONResponse:
    try:
        await asyncio.wait_for(probe(), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure or a hang means "down"; the answer still comes within 2 s
        reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return JSONResponse({"status": "unavailable", name: "down", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ok", name: "up"})


async def _ping_db() -> None:
    async with get_engine().connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _ping_redis() -> None:
    await get_redis().ping()


def _down(model: type) -> dict[int | str, dict]:
    return {503: {"model": model, "description": "The dependency is down or did not answer in time"}}


@router.get("/health", operation_id="health", summary="The process is up")
async def health() -> HealthOk:
    """The process is up."""
    return HealthOk(status="ok")


@router.get(
    "/health/db",
    operation_id="health-db",
    summary="PostgreSQL answers",
    response_model=DatabaseUp,
    responses=_down(DatabaseDown),
)
async def health_db() -> JSONResponse:
    """PostgreSQL answers a query within the time budget."""
    return await _check("database", _ping_db)


@router.get(
    "/health/redis",
    operation_id="health-redis",
    summary="Redis answers",
    response_model=RedisUp,
    responses=_down(RedisDown),
)
async def health_redis() -> JSONResponse:
    """Redis answers PING within the time budget."""
    return await _check("redis", _ping_redis)
