"""Issue 9, scenarios 5 and 6, end to end: ids are not card data, and every door is guarded.

A running API (gunicorn), worker and relay on MariaDB and the broker, the gateway sandbox delivering
signed webhooks. Scenario 5: a numeric user id (JWT `sub`) and a bank UTR that pass Luhn never block
a capture or a settlement; their events are written and published with the ids intact. Scenario 6:
one test card number goes through every door a caller has (each body field, each header, the path
and the query, signed webhooks) and is then found nowhere: not in any table, not in any log line of
the three processes, not in any message on the topic.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.orm import Session

from config.settings import DEV_JWT_SECRET
from gateway_sandbox.server import SandboxServer
from gateway_sandbox.stripe.events import sign_payload
from localparts.topic_reader import Record, TopicReader
from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import GatewayEventRow, OutboxEventRow, PaymentRow, WithdrawalRequestRow
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for

from .conftest import REPO, start_api, user_headers

pytestmark = pytest.mark.e2e

PAN = "4242424242424242"  # Stripe's public test card number: the one number swept for
MASK = "[card ****4242]"
LUHN_SUB = "4111111111111111"  # a numeric user id that passes Luhn (an id, not card data)
LUHN_UTR = "5555555555554444"  # a 16-digit bank UTR that passes Luhn (an id, not card data)
TOPIC = f"payment.events.doors.{uuid.uuid4().hex[:8]}"


def key() -> str:
    return uuid.uuid4().hex


# --- the stack -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(api_env: dict[str, str], e2e_sandbox: SandboxServer, kafka_bootstrap: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs: Path = tmp_path_factory.mktemp("doors")
    env = {**api_env, "EVENTS_TOPIC": TOPIC, "WORKER_WEBHOOK_INTERVAL_SECONDS": "0.2", "RELAY_METRICS_PORT": "0"}
    api, url = start_api(env, logs, workers=1)
    worker = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, logs / "worker.log")
    relay = ServiceProcess([str(VENV_BIN / "payment-service"), "relay"], env, REPO, logs / "relay.log")
    engine = create_engine(env["DATABASE_URL"])
    e2e_sandbox.config.stripe_webhook_url = url + "/webhooks/stripe"
    e2e_sandbox.config.razorpay_webhook_url = url + "/webhooks/razorpay"
    try:
        yield {"url": url, "engine": engine, "sandbox": e2e_sandbox, "kafka": kafka_bootstrap,
               "processes": [api, worker, relay]}
    finally:
        e2e_sandbox.config.stripe_webhook_url = None
        e2e_sandbox.config.razorpay_webhook_url = None
        for proc in (relay, worker, api):
            proc.stop()
        engine.dispose()


def api_key(engine: Engine, *scopes: str) -> dict[str, str]:
    with Session(engine) as session:
        issued = SqlAlchemyApiClientRepository(session).create_client(f"svc-{uuid.uuid4().hex[:8]}", scopes)
        session.commit()
    return {"X-API-Key": issued.key}


def topup_body(**changes: Any) -> dict[str, Any]:
    return {"amount": 5000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa",
            "return_url": "https://wallet.example/back", **changes}


def withdrawal_body(user: str, **beneficiary: Any) -> dict[str, Any]:
    return {"user_id": user, "amount": 100_000, "currency": "INR", "mode": "IMPS",
            "beneficiary": {"name": "A Kumar", "account_number": "50100234567891", "ifsc": "HDFC0000123",
                            **beneficiary}}


def withdrawal(engine: Engine, withdrawal_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(WithdrawalRequestRow).where(WithdrawalRequestRow.id == withdrawal_id)).one()


def payment_status(engine: Engine, payment_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(PaymentRow.status).where(PaymentRow.id == payment_id)).scalar_one()


def settle(sandbox: SandboxServer, engine: Engine, withdrawal_id: str, **body: Any) -> None:
    payout_id = wait_for(lambda: withdrawal(engine, withdrawal_id).gateway_payout_id, what="the payout id")
    resp = requests.post(f"{sandbox.url}/razorpay/_admin/payouts/{payout_id}/settle", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    wait_for(lambda: withdrawal(engine, withdrawal_id).status == "SETTLED", what="the payout settled")


def outbox_rows(engine: Engine, subject: str | None = None) -> list[Any]:
    query = select(OutboxEventRow).order_by(OutboxEventRow.id)
    if subject is not None:
        query = query.where(OutboxEventRow.subject == subject)
    with engine.connect() as conn:
        return list(conn.execute(query).all())


def published(stack: dict[str, Any], subject: str, event_type: str) -> Record:
    """Wait until the relay has published the subject's event, then read it from the topic."""
    engine = stack["engine"]
    rows = wait_for(lambda: [r for r in outbox_rows(engine, subject)
                             if r.event_type == event_type and r.published_at is not None] or None,
                    what=f"{event_type} of {subject} published")
    assert all(r.quarantined_at is None for r in outbox_rows(engine, subject))
    with TopicReader(stack["kafka"], TOPIC) as reader:
        (record,) = reader.wait_for(lambda r: r.header("event_id") == rows[0].event_id.encode(), count=1,
                                    timeout=30)
    return record


# --- scenario 5: ids that pass Luhn --------------------------------------------------------------


def test_capture_for_a_luhn_valid_numeric_user_id_commits_and_is_published(stack) -> None:
    resp = requests.post(f"{stack['url']}/payments/topup", json=topup_body(),
                         headers=user_headers(LUHN_SUB, key()), timeout=30)
    assert resp.status_code == 201, resp.text
    payment = resp.json()
    assert payment["status"] == "CAPTURED" and payment["user_id"] == LUHN_SUB
    assert payment_status(stack["engine"], payment["id"]) == "CAPTURED"
    record = published(stack, payment["id"], "PAYMENT_CAPTURED")
    doc = record.json()
    assert record.key == LUHN_SUB.encode() and doc["data"]["user_id"] == LUHN_SUB
    assert doc["subject"] == payment["id"] and doc["data"]["payment_id"] == payment["id"]
    (row,) = outbox_rows(stack["engine"], payment["id"])
    assert row.user_id == LUHN_SUB and json.loads(row.payload)["data"]["user_id"] == LUHN_SUB


def test_settlement_with_a_luhn_valid_utr_commits_and_is_published(stack) -> None:
    payouts = api_key(stack["engine"], "withdrawals:write", "withdrawals:read")
    resp = requests.post(f"{stack['url']}/withdrawals", json=withdrawal_body("u_doors_utr"),
                         headers={**payouts, "Idempotency-Key": key()}, timeout=30)
    assert resp.status_code == 202, resp.text
    w = resp.json()
    settle(stack["sandbox"], stack["engine"], w["id"], utr=LUHN_UTR)
    assert withdrawal(stack["engine"], w["id"]).utr == LUHN_UTR
    record = published(stack, w["id"], "WITHDRAWAL_SETTLED")
    assert record.json()["data"]["utr"] == LUHN_UTR and record.json()["data"]["withdrawal_id"] == w["id"]
    got = requests.get(f"{stack['url']}/withdrawals/{w['id']}", headers=payouts, timeout=10).json()
    assert got["utr"] == LUHN_UTR and got["status"] == "SETTLED"
    with stack["engine"].connect() as conn:
        stored = conn.execute(select(GatewayEventRow.payload).where(
            GatewayEventRow.event_type == "payout.processed", GatewayEventRow.payload.contains(w["id"]))).scalar_one()
    assert json.loads(stored)["payload"]["payout"]["entity"]["utr"] == LUHN_UTR  # the inbox keeps ids too


# --- scenario 6: one card number through every door ----------------------------------------------


def test_one_card_number_through_every_door_is_found_nowhere(stack) -> None:
    url, engine, sandbox = stack["url"], stack["engine"], stack["sandbox"]
    refunder = api_key(engine, "payments:refund", "payments:read")
    payouts = api_key(engine, "withdrawals:write", "withdrawals:read")
    user = "u_doors"
    answers: list[requests.Response] = []

    def send(method: str, path: str, expect: tuple[int, ...], **kw: Any) -> requests.Response:
        resp = requests.request(method, url + path, timeout=30, **kw)
        assert resp.status_code in expect, f"{method} {path}: {resp.status_code} {resp.text}"
        answers.append(resp)
        return resp

    # Body fields: refused before anything is stored or logged.
    pan = int(PAN)
    for body in (topup_body(amount=pan), topup_body(currency=PAN), topup_body(gateway=PAN), topup_body(token=PAN),
                 {**topup_body(), "token": None, "gateway": None, "payment_method_id": PAN},
                 topup_body(return_url=f"https://wallet.example/back?card={PAN}"),
                 topup_body(device={"id": PAN}), topup_body(device={"id": "d1", "ip": PAN}), topup_body(note=PAN)):
        send("POST", "/payments/topup", (422,), json=body, headers=user_headers(user, key()))
    for body in ({"gateway": PAN, "token": "pm_card_visa"}, {"gateway": "stripe", "token": PAN},
                 {"gateway": "stripe", "token": "pm_card_visa", "nickname": PAN}):
        send("POST", "/payment-methods", (422,), json=body, headers=user_headers(user, key()))
    captured = send("POST", "/payments/topup", (201,), json=topup_body(), headers=user_headers(user, key())).json()
    for body in ({"amount": pan}, {"reason": PAN}, {"reason": "duplicate", "note": PAN}):
        send("POST", f"/payments/{captured['id']}/refunds", (422,), json=body,
             headers={**refunder, "Idempotency-Key": key()})
    for body in (withdrawal_body(PAN), {**withdrawal_body(user), "amount": pan},
                 {**withdrawal_body(user), "currency": PAN}, {**withdrawal_body(user), "mode": PAN},
                 withdrawal_body(user, name=PAN), withdrawal_body(user, ifsc=PAN),
                 {**withdrawal_body(user), "mode": "UPI", "beneficiary": {"name": "A Kumar", "vpa": f"{PAN}@okhdfc"}}):
        send("POST", "/withdrawals", (422,), json=body, headers={**payouts, "Idempotency-Key": key()})
    # The account number is the one body field that may hold a long digit run: accepted, kept as last4.
    w = send("POST", "/withdrawals", (202,), json=withdrawal_body(user, account_number=PAN),
             headers={**payouts, "Idempotency-Key": key()}).json()
    assert w["beneficiary"]["account_last4"] == PAN[-4:]
    settle(sandbox, engine, w["id"])

    # Headers, on requests that succeed and store things.
    headers = {**user_headers(user, PAN), "X-Request-Id": PAN, "User-Agent": PAN, "Referer": f"https://x/?c={PAN}",
               "X-Forwarded-For": PAN, "Accept-Language": PAN, "X-Card": PAN, "Cookie": f"card={PAN}"}
    first = send("POST", "/payments/topup", (201,), json=topup_body(), headers=headers)
    again = send("POST", "/payments/topup", (201,), json=topup_body(), headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["id"] == first.json()["id"]
    for resp in (first, again):
        assert resp.headers["X-Request-Id"].startswith("req_")
    send("POST", f"/payments/{captured['id']}/refunds", (201,), json={"amount": 100},
         headers={**refunder, "Idempotency-Key": PAN, "X-Request-Id": f"rid-{PAN}"})
    send("GET", "/payments", (401,), headers={"Authorization": f"Bearer {PAN}"})
    send("GET", "/payments", (401,), headers={"X-API-Key": PAN})
    claims = {"sub": user, "aud": "payment-service", "exp": int(time.time()) + 3600, "card": PAN}
    send("GET", "/payments", (200,), headers={"Authorization": "Bearer " + jwt.encode(claims, DEV_JWT_SECRET)})

    # The path and the query string.
    send("GET", f"/payments/{PAN}", (404,), headers=user_headers(user))
    send("GET", f"/payments/{PAN}/refunds", (404,), headers=refunder)
    send("POST", f"/payments/{PAN}/refunds", (404,), json={}, headers={**refunder, "Idempotency-Key": key()})
    send("DELETE", f"/payment-methods/{PAN}", (404,), headers=user_headers(user))
    send("GET", f"/withdrawals/{PAN}", (404,), headers=payouts)
    send("GET", f"/{PAN}", (404,))
    send("GET", f"/payments?cursor={PAN}&status=CAPTURED", (422,), headers=user_headers(user))
    send("GET", f"/payments?user_id={PAN}", (403,), headers=user_headers(user))  # another user's list
    send("GET", f"/healthz?card={PAN}", (200,))
    send("POST", f"/payments/topup?card={PAN}", (201,), json=topup_body(), headers=user_headers(user, key()))
    send("POST", "/payments/topup", (415,), data=f"card={PAN}", headers={
        **user_headers(user, key()), "Content-Type": "application/x-www-form-urlencoded"})

    # Signed webhooks: free text and metadata of a Stripe payment intent, and a Razorpay event whose
    # id (a header the signature does not cover) and notes hold the number. Plus a forged one.
    pending = send("POST", "/payments/topup", (202,), json=topup_body(token="pm_card_threeDSecure2Required"),
                   headers=user_headers(user, key())).json()
    intent = {k: v for k, v in sandbox.sandbox.store.get(pending["gateway_payment_id"]).items()
              if not k.startswith("_")}
    intent = json.loads(json.dumps(intent))
    intent.update(status="succeeded", description=f"wallet top-up, card {PAN}",
                  metadata={**intent.get("metadata", {}), "note": f"customer said {PAN}", "n": pan})
    event = {"id": "evt_" + key(), "object": "event", "type": "payment_intent.succeeded",
             "created": int(time.time()), "data": {"object": intent}, "livemode": False}
    raw = json.dumps(event).encode()
    signature = sign_payload(raw, sandbox.config.stripe_webhook_secret)
    send("POST", "/webhooks/stripe", (200,), data=raw,
         headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
    send("POST", "/webhooks/stripe", (400,), data=raw, headers={
        "Stripe-Signature": f"t={int(time.time())},v1={PAN}", "Content-Type": "application/json"})
    rzp = json.dumps({"entity": "event", "event": "order.notification", "contains": ["order"],
                      "payload": {"order": {"entity": {"id": "order_doors", "notes": {"memo": PAN}}}},
                      "created_at": int(time.time())}).encode()
    send("POST", "/webhooks/razorpay", (200,), data=rzp, headers={
        "X-Razorpay-Signature": hmac.new(sandbox.config.razorpay_webhook_secret.encode(), rzp,
                                         hashlib.sha256).hexdigest(),
        "X-Razorpay-Event-Id": f"evt_{PAN}", "Content-Type": "application/json"})
    wait_for(lambda: payment_status(engine, pending["id"]) == "CAPTURED", what="the signed webhook applied")

    # Everything settles: the inbox applied, the outbox published.
    def settled() -> bool:
        with engine.connect() as conn:
            busy = conn.execute(select(GatewayEventRow.id).where(
                GatewayEventRow.status.in_(["RECEIVED", "RETRY"]))).first()
        return busy is None and all(r.published_at is not None for r in outbox_rows(engine))

    wait_for(settled, timeout=60, what="inbox applied and outbox published")
    rows = outbox_rows(engine)
    assert all(r.quarantined_at is None for r in rows)

    # --- found nowhere -----------------------------------------------------------------------
    for resp in answers:  # nor echoed back: no header, no problem detail
        assert PAN not in resp.headers.get("X-Request-Id", "") and PAN not in resp.text, resp.request.url

    # Not in the topic: every message, its key and its headers.
    with TopicReader(stack["kafka"], TOPIC) as reader:
        reader.wait_for(count=len(rows), timeout=60)
        records = reader.drain(quiet=1.5)
    assert {r.header("event_id") for r in records} >= {r.event_id.encode() for r in rows}
    for r in records:
        assert PAN.encode() not in (r.value or b"") + (r.key or b"") + b"".join(v or b"" for _, v in r.headers)
    captured_ids = {r.json()["subject"] for r in records if r.header("event_type") == b"PAYMENT_CAPTURED"}
    assert {captured["id"], first.json()["id"], pending["id"]} <= captured_ids

    # Not in the database: every column of every row of every table.
    found = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM `{table}`")).all():  # noqa: S608 - our own table names
                for column, value in row._mapping.items():
                    shown = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
                    if PAN in shown:
                        found.append(f"{table}.{column}")
        assert found == []
        hashed = hashlib.sha256(PAN.encode()).hexdigest()
        assert conn.execute(text("SELECT COUNT(*) FROM idempotency_keys WHERE `key` = :k"),
                            {"k": hashed}).scalar_one() == 2  # stored, as its hash (top-up and refund)
        stored = json.loads(conn.execute(select(GatewayEventRow.payload).where(
            GatewayEventRow.gateway_event_id == event["id"])).scalar_one())["data"]["object"]
        assert stored["description"] == f"wallet top-up, card {MASK}" and stored["metadata"]["n"] == MASK
        assert stored["id"] == intent["id"]
        assert conn.execute(select(func.count()).where(
            GatewayEventRow.gateway_event_id == f"evt_{MASK}")).scalar_one() == 1

    # Not in any log line of the API, the worker or the relay.
    for proc in stack["processes"]:
        log = proc.output()
        assert PAN not in log, [line for line in log.splitlines() if PAN in line][:5]
    api_log = stack["processes"][0].output()
    assert f'"path": "/payments/{MASK}"' in api_log  # the requests were logged, masked

