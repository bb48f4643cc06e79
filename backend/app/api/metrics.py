"""`GET /metrics`: Prometheus exposition (unversioned, not in the OpenAPI schema).

With `METRICS_TOKEN` set it answers only `Authorization: Bearer <token>` (401 otherwise); without,
it is open in development and test and absent (404) in production, so a deployment that forgets
the token never serves it on the public port.
"""

from fastapi import APIRouter, Request, Response

from app import metrics
from app.config import get_settings
from app.errors import NotFound, Unauthorized
from app.services.messaging import backlog

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def scrape(request: Request) -> Response:
    """Every API process's series (summed under `serve`), and the backlog measured now."""
    access = metrics.scrape_access(get_settings(), request.headers.get("authorization"))
    if access is metrics.Access.CLOSED:
        raise NotFound("Not found")
    if access is metrics.Access.DENIED:
        raise Unauthorized("/metrics needs the METRICS_TOKEN bearer token")
    figures = await backlog.measure()
    body, headers = metrics.render(
        (metrics.api_collector(), metrics.backlog_collector(figures)),
        accept=request.headers.get("accept"),
        accept_encoding=request.headers.get("accept-encoding"),
    )
    return Response(body, headers=headers)
