"""POST /payments/topup and the reads, end to end: a running `payment-service serve`, MariaDB, the sandbox."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import OutboxEventRow, PaymentRow

from .conftest import start_api, user_headers, user_token

VISA_TEST_NUMBER = "4242424242424242"  # Stripe's public test number, only ever sent to be refused


def key() -> str:
    return uuid.uuid4().hex


def topup_body(**kw) -> dict:
    body = {
        "amount": 50000,
        "currency": "INR",
        "gateway": "stripe",
        "token": "pm_card_visa",
        "return_url": "https://wallet.example/after-3ds",
        "device": {"id": "device-123", "ip": "203.0.113.7"},
    }
    body.update(kw)
    return body


def post_topup(api_url: str, user: str, body: dict, idem: str | None = None) -> requests.Response:
    return requests.post(f"{api_url}/payments/topup", json=body, headers=user_headers(user, idem or key()), timeout=30)


@pytest.fixture(scope="module")
def client_key(engine):
    """A service client's API key with the given scopes."""

    def make(*scopes: str) -> str:
        with Session(engine) as session:
            issued = SqlAlchemyApiClientRepository(session).create_client(f"svc-{uuid.uuid4().hex[:8]}", scopes)
            session.commit()
        return issued.key

    return make


def outbox_types(engine, payment_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(OutboxEventRow.event_type)
                .where(OutboxEventRow.subject == payment_id)
                .order_by(OutboxEventRow.id)
            ).scalars()
        )


def test_sync_success_stripe(api_url, engine) -> None:
    resp = post_topup(api_url, "u_ok", topup_body())
    assert resp.status_code == 201, resp.text
    p = resp.json()
    assert p["status"] == "CAPTURED" and p["id"].startswith("pay_") and p["user_id"] == "u_ok"
    assert p["gateway_payment_id"].startswith("pi_") and p["card"] == {"brand": "visa", "last4": "4242"}
    assert p["captured_at"] and p["next_action"] is None and p["refunded_amount"] == 0
    assert outbox_types(engine, p["id"]) == ["PAYMENT_CAPTURED"]
    got = requests.get(f"{api_url}/payments/{p['id']}", headers=user_headers("u_ok"), timeout=10)
    assert got.status_code == 200 and got.json() == p


def test_sync_success_razorpay(api_url, engine) -> None:
    resp = post_topup(api_url, "u_rzp", topup_body(gateway="razorpay", token="tok_rzp_success"))
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "CAPTURED" and resp.json()["gateway_payment_id"].startswith("pay_")
    assert outbox_types(engine, resp.json()["id"]) == ["PAYMENT_CAPTURED"]


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
def test_declines_are_402_failed(api_url, engine, token, code) -> None:
    resp = post_topup(api_url, "u_decl", topup_body(token=token))
    assert resp.status_code == 402, resp.text
    p = resp.json()
    assert p["status"] == "FAILED" and p["failure_code"] == code and p["failure_message"]
    assert outbox_types(engine, p["id"]) == ["PAYMENT_FAILED"]


def test_three_ds_is_202_pending_with_redirect(api_url, engine, e2e_sandbox) -> None:
    resp = post_topup(api_url, "u_3ds", topup_body(token="pm_card_threeDSecure2Required"))
    assert resp.status_code == 202, resp.text
    p = resp.json()
    assert p["status"] == "PENDING_3DS" and p["expires_at"]
    assert p["next_action"]["type"] == "redirect_to_url"
    assert p["next_action"]["url"].startswith(e2e_sandbox.url)
    assert outbox_types(engine, p["id"]) == []


def test_idempotent_replay_same_response_no_second_charge(api_url, e2e_sandbox) -> None:
    idem, body = key(), topup_body()
    first = post_topup(api_url, "u_idem", body, idem)
    second = post_topup(api_url, "u_idem", body, idem)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    pid = first.json()["id"]
    intents = e2e_sandbox.sandbox.store.find(
        lambda o: o.get("object") == "payment_intent" and o.get("metadata", {}).get("payment_id") == pid
    )
    assert len(intents) == 1


def test_key_reused_with_another_body_is_409(api_url) -> None:
    idem = key()
    assert post_topup(api_url, "u_reuse", topup_body(), idem).status_code == 201
    resp = post_topup(api_url, "u_reuse", topup_body(amount=123), idem)
    assert resp.status_code == 409 and resp.json()["code"] == "idempotency_key_reused"
    # Keys belong to their caller: another user may use the same one.
    assert post_topup(api_url, "u_other", topup_body(), idem).status_code == 201


def test_missing_idempotency_key_is_refused(api_url) -> None:
    resp = requests.post(f"{api_url}/payments/topup", json=topup_body(), headers=user_headers("u_k"), timeout=10)
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "Idempotency-Key"


def test_fifty_concurrent_same_key_one_payment_one_charge(api_url, engine, e2e_sandbox) -> None:
    idem, body, n = key(), topup_body(amount=777), 50
    barrier = threading.Barrier(n)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def go() -> None:
        barrier.wait()
        r = post_topup(api_url, "u_race", body, idem)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = Counter(r.status_code for r in results)
    assert len(results) == n and set(statuses) <= {201, 409}, statuses
    assert all(r.json()["code"] == "idempotency_key_in_use" for r in results if r.status_code == 409)
    ids_seen = {r.json()["id"] for r in results if r.status_code == 201}
    assert len(ids_seen) == 1
    with engine.connect() as conn:
        rows = conn.execute(select(PaymentRow.id).where(PaymentRow.user_id == "u_race")).scalars().all()
    assert rows == list(ids_seen)
    intents = e2e_sandbox.sandbox.store.find(
        lambda o: o.get("object") == "payment_intent" and o.get("metadata", {}).get("payment_id") == rows[0]
    )
    assert len(intents) == 1


def test_another_users_payment_is_404(api_url) -> None:
    p = post_topup(api_url, "u_owner", topup_body()).json()
    resp = requests.get(f"{api_url}/payments/{p['id']}", headers=user_headers("u_intruder"), timeout=10)
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    listing = requests.get(f"{api_url}/payments", headers=user_headers("u_intruder"), timeout=10).json()
    assert listing["data"] == []


def test_missing_and_expired_tokens_are_401(api_url) -> None:
    resp = requests.post(f"{api_url}/payments/topup", json=topup_body(), headers={"Idempotency-Key": key()}, timeout=10)
    assert resp.status_code == 401 and resp.headers["Content-Type"] == "application/problem+json"
    expired = {"Authorization": f"Bearer {user_token('u_x', exp_in=-60)}", "Idempotency-Key": key()}
    resp = requests.post(f"{api_url}/payments/topup", json=topup_body(), headers=expired, timeout=10)
    assert resp.status_code == 401
    wrong_aud = {"Authorization": f"Bearer {user_token('u_x', aud='someone-else')}", "Idempotency-Key": key()}
    assert (
        requests.post(f"{api_url}/payments/topup", json=topup_body(), headers=wrong_aud, timeout=10).status_code == 401
    )


def test_scopes(api_url, client_key) -> None:
    p = post_topup(api_url, "u_scoped", topup_body()).json()
    reader = {"X-API-Key": client_key("payments:read")}
    refunder = {"X-API-Key": client_key("payments:refund")}
    assert requests.get(f"{api_url}/payments/{p['id']}", headers=reader, timeout=10).status_code == 200
    resp = requests.get(f"{api_url}/payments/{p['id']}", headers=refunder, timeout=10)
    assert resp.status_code == 403 and resp.headers["Content-Type"] == "application/problem+json"
    listing = requests.get(f"{api_url}/payments", params={"user_id": "u_scoped"}, headers=reader, timeout=10)
    assert [x["id"] for x in listing.json()["data"]] == [p["id"]]
    # A service client cannot top up: that is the user's act.
    resp = requests.post(
        f"{api_url}/payments/topup", json=topup_body(), headers={**reader, "Idempotency-Key": key()}, timeout=10
    )
    assert resp.status_code == 403
    assert requests.get(f"{api_url}/payments", headers={"X-API-Key": "psk_wrong"}, timeout=10).status_code == 401


def test_card_number_in_body_is_refused_and_never_stored(api_url, engine, api_env) -> None:
    for body in (topup_body(token=VISA_TEST_NUMBER), topup_body(device={"id": "4242 4242 4242 4242"})):
        resp = post_topup(api_url, "u_pan", body)
        assert resp.status_code == 422 and resp.json()["code"] == "card_data_not_accepted"
        assert VISA_TEST_NUMBER not in resp.text and "4242 4242" not in resp.text
    with engine.connect() as conn:
        for table in ("payments", "idempotency_keys", "outbox_events"):
            dump = " ".join(str(r) for r in conn.execute(text(f"SELECT * FROM {table}")))  # noqa: S608
            assert VISA_TEST_NUMBER not in dump


def test_list_is_newest_first_and_cursor_paginated(api_url) -> None:
    made = [post_topup(api_url, "u_list", topup_body(amount=100 + i)).json()["id"] for i in range(5)]
    post_topup(api_url, "u_list", topup_body(token="pm_card_chargeDeclined"))
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "status": "CAPTURED", **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{api_url}/payments", params=params, headers=user_headers("u_list"), timeout=10).json()
        seen += [x["id"] for x in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(made))
    bad = requests.get(
        f"{api_url}/payments", params={"limit": 0, "cursor": "zz"}, headers=user_headers("u_list"), timeout=10
    )
    assert bad.status_code == 422 and {e["field"] for e in bad.json()["errors"]} == {"limit", "cursor"}


def test_invalid_input_is_422_and_changes_nothing(api_url, engine) -> None:
    cases = [
        topup_body(amount=-5),
        topup_body(amount="100"),
        topup_body(currency="inr"),
        topup_body(token=None),
        topup_body(payment_method_id="pm_x"),
        topup_body(extra=1),
        topup_body(gateway=None),
        topup_body(return_url="javascript:alert(1)"),
    ]
    for body in cases:
        body = {k: v for k, v in body.items() if v is not None}
        resp = post_topup(api_url, "u_bad", body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["errors"]
    with engine.connect() as conn:
        assert conn.execute(select(PaymentRow.id).where(PaymentRow.user_id == "u_bad")).first() is None


def test_payment_methods_save_use_delete(api_url) -> None:
    h = user_headers("u_pm")
    resp = requests.post(
        f"{api_url}/payment-methods", json={"gateway": "stripe", "token": "pm_card_mastercard"}, headers=h, timeout=30
    )
    assert resp.status_code == 201, resp.text
    m = resp.json()
    assert m["id"].startswith("pm_") and m["brand"] == "mastercard" and m["last4"] == "4444" and m["exp_year"]
    assert [x["id"] for x in requests.get(f"{api_url}/payment-methods", headers=h, timeout=10).json()["data"]] == [
        m["id"]
    ]
    body = {"amount": 2500, "currency": "INR", "payment_method_id": m["id"]}
    paid = post_topup(api_url, "u_pm", body)
    assert paid.status_code == 201 and paid.json()["payment_method_id"] == m["id"]
    assert post_topup(api_url, "u_other_pm", body).status_code == 422  # someone else's method
    other = requests.delete(f"{api_url}/payment-methods/{m['id']}", headers=user_headers("u_x"), timeout=10)
    assert other.status_code == 404
    assert requests.delete(f"{api_url}/payment-methods/{m['id']}", headers=h, timeout=30).status_code == 204
    assert requests.get(f"{api_url}/payment-methods", headers=h, timeout=10).json()["data"] == []
    assert post_topup(api_url, "u_pm", body).status_code == 422


def test_velocity_refusal_and_rate_limit(api_env, tmp_path: Path) -> None:
    # An hour-long window: no window edge falls in the middle of the test.
    env = {**api_env, "RISK_VELOCITY_MAX_ATTEMPTS": "2", "RATE_LIMIT_USER": "6/hour"}
    proc, url = start_api(env, tmp_path, workers=1)
    try:
        user = f"u_vel_{uuid.uuid4().hex[:6]}"
        assert [post_topup(url, user, topup_body()).status_code for _ in range(2)] == [201, 201]
        refused = post_topup(url, user, topup_body())
        assert refused.status_code == 402, refused.text
        assert refused.json()["failure_code"] == "fraud_suspected" and "velocity" in refused.json()["failure_message"]
        codes = [requests.get(f"{url}/payments", headers=user_headers(user), timeout=10).status_code for _ in range(5)]
        assert codes[-1] == 429
        limited = requests.get(f"{url}/payments", headers=user_headers(user), timeout=10)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
        assert limited.json()["code"] == "rate_limited"
        assert requests.get(f"{url}/payments", headers=user_headers("u_fresh"), timeout=10).status_code == 200
    finally:
        proc.stop()
