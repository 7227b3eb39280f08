"""Webhooks in, end to end: the sandbox delivers signed events to a running API; a running worker
applies them. 3-D Secure completed by webhook, duplicates, reordering, bad signatures."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from gateway_sandbox.stripe.events import sign_payload
from payment_service.adapters.orm import GatewayEventRow, OutboxEventRow, PaymentRow
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for

from .conftest import REPO, user_headers, webhooks_to


@pytest.fixture(scope="module")
def worker(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {**api_env, "WORKER_WEBHOOK_INTERVAL_SECONDS": "0.2", "WORKER_EXPIRY_INTERVAL_SECONDS": "1",
           "WORKER_RECONCILE_INTERVAL_SECONDS": "1"}
    proc = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO,
                          tmp_path_factory.mktemp("worker") / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def wired(api_url: str, e2e_sandbox, worker) -> Iterator[str]:
    with webhooks_to(api_url, e2e_sandbox) as url:
        yield url



def topup(api_url: str, user: str, **body: Any) -> dict:
    payload = {"amount": 4200, "currency": "INR", "gateway": "stripe", "token": "pm_card_threeDSecure2Required",
               "return_url": "https://wallet.example/back", **body}
    resp = requests.post(f"{api_url}/payments/topup", json=payload, headers=user_headers(user, uuid.uuid4().hex),
                         timeout=30)
    assert resp.status_code in (201, 202, 402), resp.text
    return resp.json()


def status_of(engine, payment_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(PaymentRow.status).where(PaymentRow.id == payment_id)).scalar_one()


def events_for(engine, payment_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxEventRow.event_type).where(OutboxEventRow.subject == payment_id)
                                 .order_by(OutboxEventRow.id)).scalars())


def inbox_count(engine, **where: str) -> int:
    with engine.connect() as conn:
        stmt = select(func.count()).select_from(GatewayEventRow)
        for k, v in where.items():
            stmt = stmt.where(getattr(GatewayEventRow, k) == v)
        return int(conn.execute(stmt).scalar_one())


def complete_challenge(url: str, result: str = "approve") -> requests.Response:
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "3-D Secure" in page.text
    return requests.post(url, data={"result": result}, allow_redirects=False, timeout=10)


@pytest.mark.parametrize(("gateway", "token"), [("stripe", "pm_card_threeDSecure2Required"),
                                                 ("razorpay", "tok_rzp_3ds_success")])
def test_3ds_completed_by_webhook_captures_once(wired, engine, gateway, token) -> None:
    p = topup(wired, f"u_wh_{gateway}", gateway=gateway, token=token)
    assert p["status"] == "PENDING_3DS"
    back = complete_challenge(p["next_action"]["url"])
    assert back.status_code in (302, 303) and back.headers["Location"].startswith("https://wallet.example/back")
    wait_for(lambda: status_of(engine, p["id"]) == "CAPTURED", what="webhook to capture the payment")
    got = requests.get(f"{wired}/payments/{p['id']}", headers=user_headers(f"u_wh_{gateway}"), timeout=10).json()
    assert got["status"] == "CAPTURED" and got["captured_at"] and got["next_action"] is None
    assert events_for(engine, p["id"]) == ["PAYMENT_CAPTURED"]


def test_3ds_failed_by_webhook(wired, engine) -> None:
    p = topup(wired, "u_wh_fail")
    complete_challenge(p["next_action"]["url"], "fail")
    wait_for(lambda: status_of(engine, p["id"]) == "FAILED", what="webhook to fail the payment")
    assert events_for(engine, p["id"]) == ["PAYMENT_FAILED"]


def test_webhook_delivered_ten_times_one_transition(wired, engine, e2e_sandbox) -> None:
    p = topup(wired, "u_wh_dup")
    requests.post(e2e_sandbox.url + "/_sandbox/webhooks", json={"duplicate": 9}, timeout=10)
    try:
        complete_challenge(p["next_action"]["url"])
        wait_for(lambda: status_of(engine, p["id"]) == "CAPTURED", what="capture")
        deliveries = requests.get(e2e_sandbox.url + "/_sandbox/webhooks/deliveries", timeout=10).json()
        succeeded = [d for d in deliveries if d["type"] == "payment_intent.succeeded"
                     and d["delivered"]]
        wait_for(lambda: len([d for d in requests.get(e2e_sandbox.url + "/_sandbox/webhooks/deliveries",
                                                      timeout=10).json()
                              if d["type"] == "payment_intent.succeeded" and d["delivered"]]) >= 10,
                 what="ten deliveries")
        assert succeeded is not None
    finally:
        requests.post(e2e_sandbox.url + "/_sandbox/webhooks", json={"duplicate": 0}, timeout=10)
    assert events_for(engine, p["id"]) == ["PAYMENT_CAPTURED"]


def _signed_intent_event(e2e_sandbox, event_type: str, intent_id: str) -> tuple[bytes, dict[str, str]]:
    intent = json.loads(json.dumps(e2e_sandbox.sandbox.store.get(intent_id)))
    intent = {k: v for k, v in intent.items() if not k.startswith("_")}
    if event_type.endswith("payment_failed"):
        intent["status"] = "requires_payment_method"
        intent["last_payment_error"] = {"code": "card_declined", "decline_code": "generic_decline",
                                        "message": "Your card was declined.", "type": "card_error"}
    else:
        intent["status"] = "succeeded"
    event = {"id": "evt_" + uuid.uuid4().hex, "object": "event", "type": event_type, "created": int(time.time()),
             "data": {"object": intent}, "livemode": False}
    body = json.dumps(event).encode()
    return body, {"Stripe-Signature": sign_payload(body, e2e_sandbox.config.stripe_webhook_secret),
                  "Content-Type": "application/json"}


def test_success_and_failure_reordered_one_transition_one_event(wired, engine, e2e_sandbox) -> None:
    p = topup(wired, "u_wh_reorder")
    fail_body, fail_h = _signed_intent_event(e2e_sandbox, "payment_intent.payment_failed", p["gateway_payment_id"])
    ok_body, ok_h = _signed_intent_event(e2e_sandbox, "payment_intent.succeeded", p["gateway_payment_id"])
    for body, headers in ((ok_body, ok_h), (fail_body, fail_h), (ok_body, ok_h), (fail_body, fail_h)):
        assert requests.post(f"{wired}/webhooks/stripe", data=body, headers=headers, timeout=10).status_code == 200
    wait_for(lambda: inbox_count(engine, status="IGNORED") >= 1 and status_of(engine, p["id"]) != "PENDING_3DS",
             what="both events applied")
    wait_for(lambda: all(s in ("APPLIED", "IGNORED") for s in _statuses(engine, [ok_body, fail_body])),
             what="events settled")
    assert len(events_for(engine, p["id"])) == 1
    assert status_of(engine, p["id"]) in ("CAPTURED", "FAILED")


def _statuses(engine, bodies: list[bytes]) -> list[str]:
    ids = [json.loads(b)["id"] for b in bodies]
    with engine.connect() as conn:
        return list(conn.execute(select(GatewayEventRow.status).where(GatewayEventRow.gateway_event_id.in_(ids)))
                    .scalars())


def test_bad_and_stale_signatures_are_400_and_not_stored(wired, engine, e2e_sandbox) -> None:
    before = inbox_count(engine)
    body = json.dumps({"id": "evt_forged", "type": "payment_intent.succeeded",
                       "data": {"object": {"id": "pi_x", "object": "payment_intent"}}}).encode()
    secret = e2e_sandbox.config.stripe_webhook_secret
    cases = [
        {},  # missing
        {"Stripe-Signature": sign_payload(body, "whsec_wrong")},
        {"Stripe-Signature": sign_payload(body, secret, timestamp=int(time.time()) - 301)},  # stale
    ]
    for headers in cases:
        resp = requests.post(f"{wired}/webhooks/stripe", data=body, headers=headers, timeout=10)
        assert resp.status_code == 400 and resp.headers["Content-Type"] == "application/problem+json"
    garbage = b"not json"
    resp = requests.post(f"{wired}/webhooks/stripe", data=garbage,
                         headers={"Stripe-Signature": sign_payload(garbage, secret)}, timeout=10)
    assert resp.status_code == 400
    resp = requests.post(f"{wired}/webhooks/razorpay", data=body,
                         headers={"X-Razorpay-Signature": "00", "X-Razorpay-Event-Id": "evt_r"}, timeout=10)
    assert resp.status_code == 400
    assert inbox_count(engine) == before


def test_event_for_unknown_object_is_kept_and_retried(wired, engine, e2e_sandbox) -> None:
    event = {"id": "evt_" + uuid.uuid4().hex, "object": "event", "type": "payment_intent.succeeded",
             "created": int(time.time()), "data": {"object": {"id": "pi_nobody", "object": "payment_intent",
                                                               "status": "succeeded", "amount": 1, "currency": "inr",
                                                               "metadata": {"payment_id": "pay_nobody"}}}}
    body = json.dumps(event).encode()
    headers = {"Stripe-Signature": sign_payload(body, e2e_sandbox.config.stripe_webhook_secret)}
    assert requests.post(f"{wired}/webhooks/stripe", data=body, headers=headers, timeout=10).json()["received"]
    wait_for(lambda: inbox_count(engine, gateway_event_id=event["id"], status="RETRY"), what="a retry")
    with engine.connect() as conn:
        row = conn.execute(select(GatewayEventRow).where(GatewayEventRow.gateway_event_id == event["id"])).one()
    assert row.attempts >= 1 and "no payment" in row.last_error


def test_expiry_by_the_worker(wired, engine, api_env, e2e_sandbox, tmp_path: Path) -> None:
    # An API with a 1 s TTL, and a second worker beside the module's (two at once is fine). The
    # gateway's webhooks are dropped meanwhile: the module's worker runs with the default 900 s TTL,
    # and if it applied the requires_action webhook before the API's own answer, it would set
    # expires_at itself (in production every process has the same TTL).
    from .conftest import start_api

    env = {**api_env, "PENDING_3DS_TTL_SECONDS": "1", "WORKER_EXPIRY_INTERVAL_SECONDS": "0.5",
           "WORKER_WEBHOOK_INTERVAL_SECONDS": "0.2"}
    proc, url = start_api(env, tmp_path, workers=1)
    second = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, tmp_path / "w2.log")
    requests.post(e2e_sandbox.url + "/_sandbox/webhooks", json={"drop": 1000}, timeout=10).raise_for_status()
    try:
        p = topup(url, "u_wh_expire")
        wait_for(lambda: status_of(engine, p["id"]) == "EXPIRED", timeout=30, what="expiry")
        assert events_for(engine, p["id"]) == ["PAYMENT_EXPIRED"]
        got = requests.get(f"{url}/payments/{p['id']}", headers=user_headers("u_wh_expire"), timeout=10).json()
        assert got["status"] == "EXPIRED" and got["next_action"] is None
    finally:
        requests.post(e2e_sandbox.url + "/_sandbox/webhooks", json={"drop": 0}, timeout=10)
        second.stop()
        proc.stop()
