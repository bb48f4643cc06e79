"""Assertions shared by the HTTP tests: the problem+json shape, OAuth2 token errors, Bearer challenges."""

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, code: str) -> dict:
    """An RFC 9457 problem with the given status and stable `code`; answers the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] and body["title"] and body["detail"]
    return body


def assert_invalid_grant(response, code: str) -> dict:
    """A token-endpoint error: RFC 6749 §5.2 members beside the problem members."""
    body = assert_problem(response, 400, code)
    assert body["error"] == "invalid_grant"
    assert body["error_description"]
    return body


def assert_unauthorized(response) -> dict:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = assert_problem(response, 401, response.json()["code"])
    assert body["code"] in {"not_authenticated", "invalid_token"}
    return body
