"""Bench-only app factory: the real app, plus a bare FastAPI route as a same-process baseline.

    uvicorn _bench_app:create_app --factory     (bench/ on the path; see bench/users_me.py)

Requests for BARE_PATH go to a FastAPI app with one route and no middleware; everything else goes
to `app.main.create_app()` unchanged (lifespan included). The product API never serves BARE_PATH.
"""

import os

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

BARE_PATH = "/__bench__/bare"


def _bare_app() -> FastAPI:
    bare = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @bare.get(BARE_PATH)
    async def bare_route() -> dict[str, str | int]:
        return {"status": "ok", "pid": os.getpid()}  # the bench reads the server's CPU time from /proc

    return bare


def create_app() -> ASGIApp:
    from app.main import create_app as create_product_app  # imported here: the bench client imports BARE_PATH

    product, bare = create_product_app(), _bare_app()

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == BARE_PATH:
            await bare(scope, receive, send)
        else:
            await product(scope, receive, send)

    return dispatch
