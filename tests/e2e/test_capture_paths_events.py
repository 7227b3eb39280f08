"""Every way a payment gets captured (synchronous charge, 3-D Secure plus webhook, reconciliation,
expiry race) yields exactly one PAYMENT_CAPTURED event id on the topic, signed, keyed by user."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, select

from config.settings import DEV_EVENT_SIGNING_KEY
from localparts.topic_reader import TopicReader
from payment_service.adapters.kafka_publisher import verify_signature
from payment_service.adapters.orm import PaymentRow
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for

from .conftest import REPO, start_api, user_headers

TOPIC = f"payment.events.test.{uuid.uuid4().hex[:8]}"



@pytest.fixture(scope="module")
def stack(api_env, e2e_sandbox, kafka_bootstrap, tmp_path_factory) -> Iterator[dict]:
    tmp: Path = tmp_path_factory.mktemp("capture")
    env = {**api_env, "EVENTS_TOPIC": TOPIC, "PENDING_3DS_TTL_SECONDS": "3", "RECONCILE_AFTER_SECONDS": "1",
           "WORKER_WEBHOOK_INTERVAL_SECONDS": "0.2", "WORKER_EXPIRY_INTERVAL_SECONDS": "0.5",
           "WORKER_RECONCILE_INTERVAL_SECONDS": "0.5", "RELAY_METRICS_PORT": "0"}
    api, url = start_api(env, tmp, workers=1)
    worker = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, tmp / "worker.log")
    relay = ServiceProcess([str(VENV_BIN / "payment-service"), "relay"], env, REPO, tmp / "relay.log")
    e2e_sandbox.config.stripe_webhook_url = url + "/webhooks/stripe"
    try:
        yield {"url": url, "engine": create_engine(env["DATABASE_URL"]), "sandbox": e2e_sandbox,
               "kafka": kafka_bootstrap}
    finally:
        e2e_sandbox.config.stripe_webhook_url = None
        for proc in (relay, worker, api):
            proc.stop()


def status(stack, pid: str) -> str:
    with stack["engine"].connect() as conn:
        return conn.execute(select(PaymentRow.status).where(PaymentRow.id == pid)).scalar_one()


def topup(stack, user: str, token: str, expect: tuple[int, ...]) -> dict:
    resp = requests.post(f"{stack['url']}/payments/topup",
                         json={"amount": 7100, "currency": "INR", "gateway": "stripe", "token": token,
                               "return_url": "https://wallet.example/back"},
                         headers=user_headers(user, uuid.uuid4().hex), timeout=30)
    assert resp.status_code in expect, resp.text
    return resp.json()


def sandbox_admin(stack, path: str, body: dict) -> None:
    requests.post(stack["sandbox"].url + path, json=body, timeout=10).raise_for_status()


def test_each_capture_path_one_signed_event(stack) -> None:
    captured: dict[str, str] = {}  # payment id -> user

    # 1. synchronous charge
    p = topup(stack, "u_path_sync", "pm_card_visa", (201,))
    captured[p["id"]] = "u_path_sync"

    # 2. 3-D Secure completed, the webhook captures
    p = topup(stack, "u_path_3ds", "pm_card_threeDSecure2Required", (202,))
    requests.post(p["next_action"]["url"], data={"result": "approve"}, allow_redirects=False, timeout=10)
    wait_for(lambda: status(stack, p["id"]) == "CAPTURED", what="3DS webhook capture")
    captured[p["id"]] = "u_path_3ds"

    # 3. the charge succeeded but its response was lost: 503 now, reconciliation captures later
    sandbox_admin(stack, "/_sandbox/faults", {"mode": "lost_response", "path": "/stripe/v1/payment_intents$",
                                              "method": "POST", "remaining": 1})
    resp = requests.post(f"{stack['url']}/payments/topup",
                         json={"amount": 7100, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"},
                         headers=user_headers("u_path_recon", uuid.uuid4().hex), timeout=30)
    assert resp.status_code == 503 and resp.json()["code"] == "gateway_unavailable"
    with stack["engine"].connect() as conn:
        pid = conn.execute(select(PaymentRow.id).where(PaymentRow.user_id == "u_path_recon")).scalar_one()
    wait_for(lambda: status(stack, pid) == "CAPTURED", what="reconciliation")
    captured[pid] = "u_path_recon"

    # 4. expiry race: the customer authenticates but every webhook is lost; at expiry the job
    #    cancels first, the gateway says succeeded, and the payment is captured instead of expired.
    p = topup(stack, "u_path_expiry", "pm_card_threeDSecure2Required", (202,))
    sandbox_admin(stack, "/_sandbox/webhooks", {"drop": 100})
    try:
        requests.post(p["next_action"]["url"], data={"result": "approve"}, allow_redirects=False, timeout=10)
        wait_for(lambda: status(stack, p["id"]) == "CAPTURED", what="expiry race capture")
    finally:
        sandbox_admin(stack, "/_sandbox/webhooks", {"drop": 0})
    captured[p["id"]] = "u_path_expiry"

    with TopicReader(stack["kafka"], TOPIC) as reader:
        reader.wait_for(lambda r: r.header("event_type") == b"PAYMENT_CAPTURED", count=len(captured), timeout=60)
        records = reader.drain(quiet=2.0)
    ids_by_payment: dict[str, set[str]] = defaultdict(set)
    for r in records:
        doc = r.json()
        assert r.header("event_id").decode() == doc["id"]
        assert r.header("event_type").decode() == doc["type"]
        assert verify_signature(r.value, r.header("signature"), DEV_EVENT_SIGNING_KEY)
        assert r.key.decode() == doc["data"]["user_id"]
        if doc["type"] == "PAYMENT_CAPTURED":
            ids_by_payment[doc["data"]["payment_id"]].add(doc["id"])
            assert json.loads(r.value)["specversion"] == "1.0"
    assert {pid: len(ids) for pid, ids in ids_by_payment.items()} == {pid: 1 for pid in captured}
