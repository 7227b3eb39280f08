"""Every JSON body the API answers is the one /openapi.json documents (issue 11), canonical amounts included.

The app runs in process on a migrated SQLite database with fake gateways; each call's body is checked
against the document the same app serves (jsonschema: every field required, no other field allowed).
A last test checks that every documented JSON response of these resources was met and checked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from config import load_settings
from config.settings import DEV_JWT_SECRET
from payment_service.adapters import migrate
from payment_service.api import create_app
from payment_service.bootstrap import bootstrap
from tests.support.openapi_responses import check_response
from tests.unit.fakes import FakeMoneyOutGateway

RESOURCES = ("/payments", "/payment-methods", "/withdrawals", "/healthz", "/readyz")
CHECKED: set[tuple[str, str, str]] = set()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('openapi')) / 'api.sqlite3'}"
    migrate.upgrade(url)
    # The shipped sample rates, whatever their age; INR amounts shown in en_IN.
    settings = load_settings({}, DATABASE_URL=url, TESTING=True, FX_MAX_AGE_SECONDS=0, DISPLAY_LOCALE="en_IN")
    container = bootstrap(settings)
    gw = FakeMoneyOutGateway()
    container.gateway_overrides = {"stripe": gw, "razorpay": gw}
    app = create_app(settings, container=container)
    yield app
    container.close()


@pytest.fixture(scope="module")
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def spec(client: Any) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()


@pytest.fixture(scope="module")
def service_key(app: Any) -> str:
    scopes = ["payments:read", "payments:refund", "withdrawals:read", "withdrawals:write"]
    with app.extensions["payment_service"].api_clients() as repo:
        return repo.create_client(f"openapi-{uuid.uuid4().hex[:8]}", scopes).key


def user(sub: str = "u_doc", key: bool = False) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "aud": "payment-service", "exp": int(time.time()) + 600}, DEV_JWT_SECRET, "HS256")
    headers = {"Authorization": f"Bearer {token}"}
    if key:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers


def service(api_key: str, key: bool = False) -> dict[str, str]:
    headers = {"X-API-Key": api_key}
    if key:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers


def call(client: Any, spec: dict[str, Any], method: str, path: str, expect: int, **kw: Any) -> Any:
    resp = client.open(path, method=method, **kw)
    assert resp.status_code == expect, resp.get_data(as_text=True)
    body = resp.get_json(force=True) if resp.get_data() else None
    if body is not None:
        template = check_response(spec, method, path, resp.status_code, resp.content_type, body)
        CHECKED.add((template, method.lower(), str(resp.status_code)))
    return body


def test_top_ups_and_reads(client: Any, spec: dict[str, Any]) -> None:
    topup = {"amount": 123450, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    paid = call(client, spec, "POST", "/payments/topup", 201, json=topup, headers=user(key=True))
    assert paid["status"] == "CAPTURED" and paid["amount_display"] == "₹1,234.50"
    # The shipped sample: 88.850 INR and 1.0520 USD per EUR -> 1,234.50 INR is 14.62 USD (14.6165...).
    assert (paid["canonical_amount"], paid["canonical_currency"]) == (1462, "USD")
    pending = call(client, spec, "POST", "/payments/topup", 202, headers=user(key=True),
                   json={**topup, "token": "tok_threeDSecureRequired", "return_url": "https://wallet.example/back"})
    assert pending["next_action"]["type"] == "redirect_to_url"
    declined = call(client, spec, "POST", "/payments/topup", 402, headers=user(key=True),
                    json={**topup, "currency": "JPY", "amount": 5000, "token": "tok_chargeDeclined"})
    assert declined["amount_display"] == "JP¥5,000" and declined["canonical_currency"] == "USD"
    kwd = call(client, spec, "POST", "/payments/topup", 201, headers=user(key=True),
               json={**topup, "currency": "KWD", "amount": 1500})
    assert kwd["amount_display"] == "KWD1.500" and kwd["canonical_amount"] == 488  # 1.5 / 0.3233 * 1.052
    usd = call(client, spec, "POST", "/payments/topup", 201, headers=user(key=True),
               json={**topup, "currency": "USD", "amount": 999})
    assert (usd["canonical_amount"], usd["amount_display"]) == (999, "$9.99")

    one = call(client, spec, "GET", f"/payments/{paid['id']}", 200, headers=user())
    assert one == paid
    page = call(client, spec, "GET", "/payments?limit=2", 200, headers=user())
    assert len(page["data"]) == 2 and page["has_more"] is True
    call(client, spec, "GET", f"/payments?limit=2&cursor={page['next_cursor']}", 200, headers=user())
    call(client, spec, "GET", "/payments/pay_nobody", 404, headers=user())
    call(client, spec, "POST", "/payments/topup", 422, headers=user(key=True), json={**topup, "amount": -1})


def test_payment_methods(client: Any, spec: dict[str, Any]) -> None:
    saved = call(client, spec, "POST", "/payment-methods", 201, headers=user("u_pm"),
                 json={"gateway": "stripe", "token": "tok_visa"})
    listed = call(client, spec, "GET", "/payment-methods", 200, headers=user("u_pm"))
    assert listed["data"] == [saved]
    call(client, spec, "DELETE", f"/payment-methods/{saved['id']}", 204, headers=user("u_pm"))


def test_refunds(client: Any, spec: dict[str, Any], service_key: str) -> None:
    topup = {"amount": 50000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    paid = call(client, spec, "POST", "/payments/topup", 201, json=topup, headers=user("u_rf", key=True))
    path = f"/payments/{paid['id']}/refunds"
    refund = call(client, spec, "POST", path, 201, json={"amount": 12345, "reason": "customer request"},
                  headers=service(service_key, key=True))
    assert refund["status"] == "SUCCEEDED" and refund["amount_display"] == "₹123.45"
    assert (refund["canonical_amount"], refund["canonical_currency"]) == (146, "USD")
    listed = call(client, spec, "GET", path, 200, headers=service(service_key))
    assert listed["data"] == [refund]
    assert call(client, spec, "GET", f"{path}/{refund['id']}", 200, headers=user("u_rf")) == refund
    call(client, spec, "POST", path, 422, json={"amount": 10**9}, headers=service(service_key, key=True))
    payment = call(client, spec, "GET", f"/payments/{paid['id']}", 200, headers=user("u_rf"))
    assert payment["refunded_amount"] == 12345


@pytest.mark.parametrize(
    ("mode", "beneficiary", "shown"),
    [
        ("IMPS", {"name": "A Kumar", "account_number": "123456789012", "ifsc": "HDFC0000123"},
         {"name": "A Kumar", "account_last4": "9012"}),
        ("UPI", {"name": "A Kumar", "vpa": "akumar@okbank"}, {"name": "A Kumar", "vpa": "akumar@okbank"}),
    ],
)
def test_withdrawals(client: Any, spec: dict[str, Any], service_key: str, mode: str, beneficiary: dict,
                     shown: dict) -> None:
    body = {"user_id": "u_wd", "amount": 100000, "currency": "INR", "mode": mode, "beneficiary": beneficiary}
    w = call(client, spec, "POST", "/withdrawals", 202, json=body, headers=service(service_key, key=True))
    assert w["beneficiary"] == shown  # exactly the shape of CONTRACT.md: one of account_last4 or vpa
    assert (w["amount_display"], w["canonical_amount"], w["canonical_currency"]) == ("₹1,000.00", 1184, "USD")
    assert call(client, spec, "GET", f"/withdrawals/{w['id']}", 200, headers=service(service_key)) == w


def test_health_and_readiness(client: Any, spec: dict[str, Any]) -> None:
    assert call(client, spec, "GET", "/healthz", 200) == {"status": "ok"}
    assert call(client, spec, "GET", "/readyz", 200) == {"status": "ready", "checks": {"database": "ok"}}


def test_every_documented_json_response_of_these_resources_was_checked(spec: dict[str, Any]) -> None:
    """Runs last in this module: the calls above met every documented non-problem JSON response."""
    documented = {
        (path, method, status)
        for path, operations in spec["paths"].items() if path.startswith(RESOURCES)
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if "application/json" in response.get("content", {})
    }
    assert documented, "nothing documented?"
    assert documented - CHECKED == set()
