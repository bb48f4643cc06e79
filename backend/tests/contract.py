"""Every problem a test provokes must be one the OpenAPI document lists for that operation.

Installed as a response hook on the `client` fixture: a code raised but not documented (a new
AppError missing from a route's `responses=`) fails the test that provoked it.
"""

from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from app.api.openapi import api_routes

PROBLEM = "application/problem+json"


@cache
def _document(app) -> dict[str, Any]:
    return app.openapi()


def prepare(app) -> None:
    """Build the app's OpenAPI document now (most of a second, several under load), not in the
    first checked response, where it would stretch a test's timing."""
    _document(app)


def _operation(app, method: str, path: str) -> dict[str, Any] | None:
    for route in api_routes(app):
        if route.include_in_schema and method in route.methods and route.path_regex.match(path):
            return _document(app)["paths"][route.path_format][method.lower()]
    return None


def check_problem(app, method: str, path: str, status: int, body: Any) -> None:
    operation = _operation(app, method, path)
    if operation is None:  # no such route: the router's own 404/405
        return
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {path}: {status} is not documented ({body})"
    schema = response["content"][PROBLEM]["schema"]
    root = {"components": _document(app)["components"], **schema}
    errors = [e.message for e in Draft202012Validator(root).iter_errors(body)]
    assert not errors, f"{method} {path} {status}: {body.get('code')} does not match its documentation: {errors[:3]}"
