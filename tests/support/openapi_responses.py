"""Response bodies checked against the OpenAPI document that describes them (JSON Schema 2020-12).

Used by tests that drive the API (in process or over HTTP): every JSON body they get back must be
exactly what /openapi.json says for that path, method and status, so the document cannot drift.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator


def template_for(spec: dict[str, Any], method: str, path: str) -> str:
    """The documented path template a concrete path matches (`/payments/pay_1` -> `/payments/{payment_id}`)."""
    path = path.split("?", 1)[0]
    for template, operations in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if method.lower() in operations and re.match(pattern, path):
            return template
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def check_response(spec: dict[str, Any], method: str, path: str, status: int, content_type: str, body: Any) -> str:
    """Assert that `body` is what the document promises for this response; return the path template."""
    template = template_for(spec, method, path)
    responses = spec["paths"][template][method.lower()]["responses"]
    documented = responses.get(str(status))
    assert documented is not None, f"{method} {template} answered {status}, which is not documented"
    media = content_type.split(";")[0].strip()
    content = documented.get("content", {})
    assert media in content, f"{method} {template} {status}: {media} is not documented (only {sorted(content)})"
    schema = dict(content[media]["schema"])
    schema["components"] = spec["components"]  # so "#/components/schemas/..." resolves from the root
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, f"{method} {template} {status} differs from its document:\n" + "\n".join(
        f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors[:10]
    )
    return template
