"""The problems' part of the OpenAPI schema, generated from the AppError classes.

A route lists what it may answer in `responses=problem_responses(NotFound, SlotUnavailable, 422)`:
an AppError class is its `code`; a bare status stands for every known code of that status. What
the route's dependencies raise (tagged with `documented(...)`) and what any route may answer (500,
503; 413/415 with a body; 422 with parameters) is added by `app.api.openapi`. Each code becomes one
named schema (`SlotUnavailableProblem`) whose `code` is a one-value enum, so a generated client
narrows on `problem.code === "slot_unavailable"` and then sees `problem.conflicts`.
"""

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, ClassVar, TypedDict, get_origin, get_type_hints

from pydantic import TypeAdapter

from app.errors import AppError

PROBLEM_MEDIA_TYPE = "application/problem+json"
CODES_KEY = "x-problem-codes"  # carried from `responses=` to app.api.openapi, which resolves it
ALL_CODES = "*"
REF_TEMPLATE = "#/components/schemas/{model}"
_STANDARD = ("type", "title", "status", "detail", "code")

type ProblemSpec = int | type[AppError]


def schema_name(code: str) -> str:
    return "".join(part.capitalize() for part in code.split("_")) + "Problem"


def error_classes() -> list[type[AppError]]:
    """Every AppError subclass defined by the app (imported by now), parents first."""
    found: list[type[AppError]] = []
    pending = list(AppError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        if cls not in found and cls.__module__.startswith("app."):
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def classes_by_code() -> dict[str, list[type[AppError]]]:
    codes: dict[str, list[type[AppError]]] = {}
    for cls in error_classes():
        codes.setdefault(cls.code, []).append(cls)
    return codes


def codes_of_status(status: int) -> set[str]:
    return {cls.code for cls in error_classes() if cls.status == status}


def problem_responses(*specs: ProblemSpec) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the problems it may answer, by status."""
    responses: dict[int | str, dict[str, Any]] = {}
    for spec in specs:
        status, code = (spec, ALL_CODES) if isinstance(spec, int) else (spec.status, spec.code)
        add_codes(responses, status, [code])
    return responses


def add_codes(responses: dict[Any, dict[str, Any]], status: int | str, codes: Iterable[str]) -> None:
    """Add problem codes to `status` (unless the route documents another body for that status)."""
    response = responses.get(status)
    if response is None:
        response = responses[status] = {"description": HTTPStatus(int(status)).phrase, CODES_KEY: []}
    if CODES_KEY not in response:
        return
    response[CODES_KEY] = sorted(set(response[CODES_KEY]) | set(codes))


def documented(*problems: type[AppError], success_headers: tuple[str, ...] = ()) -> Callable:
    """Tag a dependency with what it may raise (and headers it adds to 2xx answers), for the schema."""

    def tag[F](dependency: F) -> F:
        dependency.__problems__ = problems  # type: ignore[attr-defined]
        dependency.__success_headers__ = success_headers  # type: ignore[attr-defined]
        return dependency

    return tag


def _extras(cls: type[AppError]) -> dict[str, Any]:
    """The members a class's problem carries beside the standard ones: its annotated attributes."""
    extras: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(AppError)]):
        own = klass.__dict__.get("__annotations__", {})
        hints = get_type_hints(klass, include_extras=True)
        extras |= {name: hints[name] for name in own if get_origin(hints[name]) is not ClassVar}
    return extras


def problem_schema(code: str, classes: list[type[AppError]], defs: dict[str, Any]) -> dict[str, Any]:
    """One code's schema; models its extras refer to go into `defs`."""
    extras: dict[str, Any] = {}
    for cls in classes:
        extras |= _extras(cls)
    members = TypeAdapter(TypedDict(schema_name(code) + "Extras", extras)).json_schema(  # type: ignore[operator]
        mode="serialization", ref_template=REF_TEMPLATE
    )
    defs.update(members.pop("$defs", {}))
    titles = sorted({cls.title for cls in classes})
    return {
        "type": "object",
        "title": schema_name(code),
        "description": f"`{code}`: {'; '.join(titles)}",
        "properties": {
            "type": {"type": "string", "enum": [f"urn:c3po:problem:{code}"]},
            "title": {"type": "string"},
            "status": {"type": "integer", "enum": sorted({cls.status for cls in classes})},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": [code]},
            **members.get("properties", {}),
        },
        "required": [*_STANDARD, *members.get("required", [])],
    }


GENERIC_PROBLEM = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details, the shape every error shares; `code` is what clients switch on.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
    },
    "required": list(_STANDARD),
}


def headers_of(codes: Iterable[str]) -> list[str]:
    known = classes_by_code()
    return sorted({header for code in codes for cls in known.get(code, []) for header in cls.documented_headers})
