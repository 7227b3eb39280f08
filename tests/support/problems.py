"""The shape every error answer of the API must have: application/problem+json with its status and code."""

from __future__ import annotations

from typing import Any


def assert_problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """A Flask test response is the problem `status`/`code`, with every RFC 9457 field we promise; its body."""
    assert resp.status_code == status
    assert resp.content_type == "application/problem+json"
    body: dict[str, Any] = resp.get_json(force=True)
    assert body["status"] == status and body["code"] == code
    assert set(body) >= {"type", "title", "status", "detail", "code", "errors"}
    return body
