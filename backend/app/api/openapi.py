"""The OpenAPI document, shaped for code generators (openapi-typescript, openapi-fetch).

FastAPI's own document is finished here: problem responses resolved to one named schema per code
(app/api/problem_docs.py), each operation's security read from its dependencies, the response
headers documented, and request schemas stripped of `default` while response schemas mark their
defaulted members required (openapi-typescript, default options, makes a member with a `default`
required wherever it appears).
"""

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import OAuth2PasswordBearer

from app.api.deps import get_access_claims
from app.api.problem_docs import (
    ALL_CODES,
    CODES_KEY,
    GENERIC_PROBLEM,
    PROBLEM_MEDIA_TYPE,
    add_codes,
    classes_by_code,
    codes_of_status,
    headers_of,
    problem_schema,
    schema_name,
)
from app.errors import (
    AppError,
    DatabaseTimeout,
    DatabaseUnavailable,
    InternalError,
    InvalidValue,
    PayloadTooLarge,
    RedisUnavailable,
    ServerBusy,
    TransactionConflict,
    UnsupportedMediaType,
    ValidationFailed,
)

BEARER = "OAuth2PasswordBearer"
REQUEST_ID = "X-Request-ID"

HEADERS: dict[str, dict[str, Any]] = {
    REQUEST_ID: {
        "description": "This request's id: the `X-Request-ID` you sent (1-128 of `A-Za-z0-9._-`) or a new one. "
        "Quote it when reporting a problem.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "`Bearer`: send `Authorization: Bearer <access token>` (RFC 6750).",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the same "
        "`Idempotency-Key` (nothing changed this time); absent on the first answer.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Cache-Control": {
        "description": "`no-store`: tokens must not be cached (RFC 6749 §5.1).",
        "required": True,
        "schema": {"type": "string", "enum": ["no-store"]},
    },
    "Pragma": {"description": "`no-cache`, for HTTP/1.0 caches.", "schema": {"type": "string", "enum": ["no-cache"]}},
}


def header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


# --- per route, when the app is built -------------------------------------------------------------


def _dependencies(dependant: Dependant) -> list[Dependant]:
    found = []
    for dependency in dependant.dependencies:
        found += [dependency, *_dependencies(dependency)]
    return found


def _has_parameters(route: Any) -> bool:
    dependant = route.dependant
    deps = [dependant, *_dependencies(dependant)]
    return route.body_field is not None or any(
        d.path_params or d.query_params or d.header_params or d.cookie_params for d in deps
    )


def _automatic_problems(route: Any) -> list[type[AppError]]:
    """What any route of its kind may answer, and what its dependencies raise."""
    automatic: list[type[AppError]] = [
        InternalError,
        DatabaseUnavailable,
        RedisUnavailable,
        ServerBusy,
        DatabaseTimeout,
        TransactionConflict,
    ]
    if route.body_field is not None:
        automatic += [PayloadTooLarge, UnsupportedMediaType]
    if _has_parameters(route):
        automatic += [ValidationFailed, InvalidValue]
    for dependency in _dependencies(route.dependant):
        automatic += getattr(dependency.call, "__problems__", ())
    return automatic


def _security(route: Any) -> list[dict[str, list]]:
    calls = [d.call for d in _dependencies(route.dependant)]
    if get_access_claims in calls:
        return [{BEARER: []}]
    if any(isinstance(call, OAuth2PasswordBearer) for call in calls):
        return [{}, {BEARER: []}]  # a token is optional: it may show more
    return []


def _success_headers(route: Any) -> list[str]:
    return [h for d in _dependencies(route.dependant) for h in getattr(d.call, "__success_headers__", ())]


# --- the finished document --------------------------------------------------------------------


def _problem_content(codes: list[str]) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{schema_name(code)}"} for code in codes]
    return {PROBLEM_MEDIA_TYPE: {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}}


def _is_fastapi_422(response: dict[str, Any]) -> bool:
    return "HTTPValidationError" in json.dumps(response.get("content", {}))


def _finish_operation(route: Any, operation: dict[str, Any], used: set[str]) -> None:
    operation["security"] = _security(route)
    responses = operation["responses"]
    if "422" in responses and _is_fastapi_422(responses["422"]):
        responses["422"] = {CODES_KEY: []}  # FastAPI's own, for a route that declared no 422
    for cls in _automatic_problems(route):
        add_codes(responses, str(cls.status), [cls.code])
    operation["responses"] = responses = dict(sorted(responses.items()))
    for key, response in responses.items():
        status = int(key)
        names = [REQUEST_ID]
        if CODES_KEY in response:
            declared = response.pop(CODES_KEY)
            codes = sorted((codes_of_status(status) if ALL_CODES in declared else set()) | set(declared) - {ALL_CODES})
            if not codes:
                raise RuntimeError(f"{route.path}: no known problem code answers {status}")
            used.update(codes)
            response["content"] = _problem_content(codes)
            response["description"] = f"{HTTPStatus(status).phrase}: " + ", ".join(f"`{c}`" for c in codes)
            names += headers_of(codes)
        elif 200 <= status < 300:
            names += _success_headers(route)
        response["headers"] = header_refs(*names) | response.get("headers", {})


def _refs(node: Any) -> set[str]:
    text = json.dumps(node)
    return {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}


def _reachable(roots: Any, schemas: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    pending = _refs(roots)
    while pending:
        name = pending.pop()
        if name not in seen and name in schemas:
            seen.add(name)
            pending |= _refs(schemas[name])
    return seen


def _split_defaults(document: dict[str, Any]) -> None:
    """Request schemas: no `default` (kept in the description); response schemas: defaulted members required."""
    schemas = document["components"]["schemas"]
    operations = [op for path in document["paths"].values() for op in path.values()]
    requests = _reachable([[op.get("requestBody"), op.get("parameters")] for op in operations], schemas)
    answers = _reachable([op["responses"] for op in operations], schemas)
    for name in requests | answers:
        properties = schemas[name].get("properties", {})
        defaulted = [member for member, schema in properties.items() if "default" in schema]
        if not defaulted:
            continue
        if name in requests and name in answers:
            raise RuntimeError(f"{name} is both a request and a response schema with defaults: split it")
        if name in answers:
            schemas[name]["required"] = [*schemas[name].get("required", []), *defaulted]
            continue
        for member in defaulted:
            schema = properties[member]
            default = json.dumps(schema.pop("default"))
            schema["description"] = f"{schema.get('description', '')} Default: `{default}`.".strip()


def api_routes(app: FastAPI) -> list[Any]:
    """The app's routes as they are served (prefixes applied), in the schema or not."""
    return [route for route in iter_route_contexts(app.routes) if isinstance(route.original_route, APIRoute)]


def finish_openapi(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    used: set[str] = set()
    for route in api_routes(app):
        if route.include_in_schema:
            for method in route.methods:
                _finish_operation(route, document["paths"][route.path_format][method.lower()], used)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for fastapi_own in ("HTTPValidationError", "ValidationError"):
        schemas.pop(fastapi_own, None)
    known = classes_by_code()
    for code in sorted(used):
        schemas[schema_name(code)] = problem_schema(code, known[code], schemas)
    schemas["Problem"] = GENERIC_PROBLEM
    components["headers"] = HEADERS
    _split_defaults(document)
    components["schemas"] = dict(sorted(schemas.items()))
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the finished document from `app.openapi()`."""
    api_routes(app)  # builds each route's context now: a route without an operation_id fails at startup
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(app, generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
