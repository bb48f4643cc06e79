"""Bodies of the health checks (plain JSON, not problems: load balancers read them)."""

from typing import Literal

from pydantic import BaseModel


class HealthOk(BaseModel):
    status: Literal["ok"]


class DatabaseUp(BaseModel):
    status: Literal["ok"]
    database: Literal["up"]


class DatabaseDown(BaseModel):
    status: Literal["unavailable"]
    database: Literal["down"]
    reason: str  # "timeout" or the failure's type name


class RedisUp(BaseModel):
    status: Literal["ok"]
    redis: Literal["up"]


class RedisDown(BaseModel):
    status: Literal["unavailable"]
    redis: Literal["down"]
    reason: str
