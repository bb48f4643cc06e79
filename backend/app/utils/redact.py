"""Secrets out of text that leaves the process: log lines and Sentry events.

`redact_text` masks what a line may carry by accident: `token=…`-style parameters (a WebSocket's
`?token=` in uvicorn's line), `"password": "…"` in JSON, bearer credentials and JWTs. `redact_path`
masks token-like path segments (a long run of URL-safe characters that is not a UUID) for the
access line; it costs nothing on a short path, so the hot path pays only a length check.
"""

import re

REDACTED = "[redacted]"
_SECRET_NAMES = r"token|access_token|refresh_token|id_token|password|new_password|current_password|secret"
_PARAMETER = re.compile(rf"(?i)\b({_SECRET_NAMES})=[^&\s\"'<>]+")
_JSON_MEMBER = re.compile(rf"(?i)(\"(?:{_SECRET_NAMES})\"\s*:\s*)\"(?:[^\"\\]|\\.)*\"")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")

# A token in a path: 32+ URL-safe characters in a row (our tokens are 43+; an access JWT's parts
# too), unless the run is exactly a UUID (ids are not secrets, and the access log wants them).
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_TOKEN_RUN = re.compile(rf"(?<![A-Za-z0-9_-])(?!{_UUID}(?![A-Za-z0-9_-]))[A-Za-z0-9_-]{{32,}}")
_SHORTEST_TOKEN = 32


def redact_text(text: str) -> str:
    text = _JWT.sub(REDACTED, text)
    text = _PARAMETER.sub(rf"\1={REDACTED}", text)
    text = _JSON_MEMBER.sub(rf'\1"{REDACTED}"', text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)


def redact_path(path: str) -> str:
    if len(path) < _SHORTEST_TOKEN:
        return path
    return _TOKEN_RUN.sub(REDACTED, path)
