"""Response bodies are their documenting models (issue 11): read from the OpenAPI document and the code.

Every JSON success body the document describes is a component built from an `Out` model (every field
required, nothing else allowed), and the views build those bodies with `schemas.body()`, never with a
hand-made dict; tests/integration/test_responses_match_openapi.py then checks real answers against it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from payment_service.api import health, openapi, payment_methods, payments, refunds, schemas, webhooks, withdrawals
from payment_service.domain.payments import Payment

VIEWS = (payments, refunds, withdrawals, payment_methods, webhooks, health)
OURS = ("/payments", "/payment-methods", "/withdrawals", "/webhooks", "/healthz", "/readyz")


def _success_refs(spec: dict[str, Any]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is not None and status.startswith("2"):
                    ref = schema.get("$ref", "")
                    refs.setdefault(ref.rsplit("/", 1)[-1], []).append(f"{method.upper()} {path} {status}")
    return refs


def _closed(name: str, schemas_: dict[str, Any], seen: set[str]) -> list[str]:
    """Problems of a component schema: a field that may be missing, or room for fields not declared."""
    if name in seen:
        return []
    seen.add(name)
    schema = schemas_[name]
    problems = []
    if schema.get("additionalProperties") is not False:
        problems.append(f"{name} allows undeclared fields")
    missing = set(schema.get("properties", {})) - set(schema.get("required", []))
    if missing:
        problems.append(f"{name} does not require {sorted(missing)}")
    for text in _refs_in(schema):
        problems += _closed(text, schemas_, seen)
    return problems


def _refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs_in(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs_in(v)]
    return []


def test_every_documented_json_success_body_is_a_closed_model() -> None:
    spec = openapi.spec()
    refs = _success_refs(spec)
    ours = {name: where for name, where in refs.items() if any(w.split()[1].startswith(OURS) for w in where)}
    assert {"PaymentOut", "PaymentList", "RefundOut", "RefundList", "WithdrawalOut", "PaymentMethodOut",
            "PaymentMethodList", "WebhookReceived", "Health", "Readiness"} <= set(ours)
    problems = [p for name in ours for p in _closed(name, spec["components"]["schemas"], set())]
    assert problems == []


@pytest.mark.parametrize("module", VIEWS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_views_answer_json_only_through_a_model(module: Any) -> None:
    """No view returns a dict literal, or jsonify()s one: a body is schemas.body(Model, ...) or a
    serializer that returns it."""
    tree = ast.parse(Path(module.__file__).read_text())
    offenders = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "jsonify":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Dict | ast.List):
                offenders.append(f"line {node.lineno}: jsonify of a literal")
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict | ast.Tuple):
            value = node.value.elts[0] if isinstance(node.value, ast.Tuple) and node.value.elts else node.value
            if isinstance(value, ast.Dict):
                offenders.append(f"line {node.lineno}: returns a dict literal")
    # The serializers' private field builders (_payment_fields...) return the dict that body() validates.
    allowed = {n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name.endswith("_fields")
               for n in ast.walk(f) if isinstance(n, ast.Return)}
    assert [o for o in offenders if int(o.split()[1].rstrip(":")) not in allowed] == []


def test_body_refuses_what_the_model_does_not_declare() -> None:
    with pytest.raises(ValueError, match="extra"):
        schemas.body(schemas.WebhookReceived, {"received": True, "duplicate": False, "secret": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        schemas.body(schemas.WebhookReceived, {"received": True})


def test_payment_body_keeps_the_contract_shape_plus_the_new_fields() -> None:
    from datetime import UTC, datetime

    t = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    p = Payment(id="pay_1", user_id="u_1", amount=123450, currency="INR", gateway="stripe", status="CAPTURED",
                created_at=t, updated_at=t, captured_at=t, gateway_payment_id="pi_1", card_brand="visa",
                card_last4="4242", gateway_token="pm_card_visa")
    assert list(payments.payment_json(p, "en_IN")) == [
        "id", "user_id", "amount", "currency", "gateway", "gateway_payment_id", "payment_method_id", "card",
        "status", "failure_code", "failure_message", "next_action", "refunded_amount", "created_at", "updated_at",
        "captured_at", "expires_at", "canonical_amount", "canonical_currency", "amount_display",
    ]
    body = payments.payment_json(p, "en_IN")
    assert body["created_at"] == "2026-12-01T10:00:00.000Z" and body["card"] == {"brand": "visa", "last4": "4242"}
    assert (body["canonical_amount"], body["canonical_currency"], body["amount_display"]) == (None, None, "₹1,234.50")
