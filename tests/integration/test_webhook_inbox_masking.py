"""A webhook body is masked before it is stored in the inbox (issue 9, scenario 6).

The app runs on a migrated SQLite file: the real view, the real gateway adapters' signature checks,
the real inbox table, and no gateway or broker.
"""

import hashlib
import hmac
import json
import time
import uuid

import pytest
from sqlalchemy import create_engine, select

from config.settings import SANDBOX_RAZORPAY_WEBHOOK_SECRET, SANDBOX_STRIPE_WEBHOOK_SECRET
from gateway_sandbox.stripe.events import sign_payload
from payment_service.adapters import migrate
from payment_service.adapters.orm import GatewayEventRow
from payment_service.api import create_app

PAN = "4242424242424242"
LUHN_UTR = "5555555555554444"  # a bank reference that passes Luhn: an id, kept as is


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/inbox.sqlite3"
    migrate.upgrade(url)
    return url


@pytest.fixture
def client(db_url):
    app = create_app(DATABASE_URL=db_url, TESTING=True,
                     STRIPE_WEBHOOK_SECRET=SANDBOX_STRIPE_WEBHOOK_SECRET,
                     RAZORPAY_WEBHOOK_SECRET=SANDBOX_RAZORPAY_WEBHOOK_SECRET)
    return app.test_client()


def inbox(db_url: str) -> list[GatewayEventRow]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(GatewayEventRow)).all())
    finally:
        engine.dispose()


def stripe_post(client, event: dict) -> None:
    body = json.dumps(event).encode()
    resp = client.post("/webhooks/stripe", data=body, headers={
        "Stripe-Signature": sign_payload(body, SANDBOX_STRIPE_WEBHOOK_SECRET), "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)


def razorpay_post(client, event: dict, event_id: str) -> None:
    body = json.dumps(event).encode()
    signature = hmac.new(SANDBOX_RAZORPAY_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = client.post("/webhooks/razorpay", data=body, headers={
        "X-Razorpay-Signature": signature, "X-Razorpay-Event-Id": event_id, "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_stripe_body_masked_before_it_is_stored(client, db_url) -> None:
    event = {
        "id": "evt_" + uuid.uuid4().hex, "object": "event", "type": "payment_intent.succeeded",
        "created": int(time.time()), "livemode": False,
        "data": {"object": {
            "id": "pi_" + uuid.uuid4().hex, "object": "payment_intent", "amount": 5000, "currency": "inr",
            "status": "succeeded", "description": f"top-up, card {PAN}",
            "metadata": {"payment_id": "pay_abc", "note": PAN, "n": int(PAN), PAN: "as a key"},
            "shipping": {"name": f"{PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}"},
        }},
    }
    stripe_post(client, event)
    (row,) = inbox(db_url)
    assert PAN not in row.payload and "4242 4242 4242 4242" not in row.payload
    stored = json.loads(row.payload)  # still JSON, and still the same event
    obj = stored["data"]["object"]
    assert stored["id"] == event["id"] and obj["id"] == event["data"]["object"]["id"] and obj["amount"] == 5000
    assert obj["description"] == "top-up, card [card ****4242]"
    assert obj["metadata"] == {"payment_id": "pay_abc", "note": "[card ****4242]", "n": "[card ****4242]",
                               "[card ****4242]": "as a key"}
    assert obj["shipping"]["name"] == "[card ****4242]"
    assert row.object_id == obj["id"] and row.reference == "pay_abc" and row.gateway_event_id == event["id"]


def test_a_body_with_nothing_to_mask_is_stored_byte_for_byte(client, db_url) -> None:
    body = ('{"id": "evt_plain",  "object": "event", "type": "charge.updated", "created": 1,'
            ' "data": {"object": {"id": "ch_1", "amount": 100}}}')
    resp = client.post("/webhooks/stripe", data=body.encode(), headers={
        "Stripe-Signature": sign_payload(body.encode(), SANDBOX_STRIPE_WEBHOOK_SECRET),
        "Content-Type": "application/json"})
    assert resp.status_code == 200
    (row,) = inbox(db_url)
    assert row.payload == body


def test_razorpay_ids_kept_free_text_and_unsigned_header_masked(client, db_url) -> None:
    payout = {"id": "pout_1", "entity": "payout", "amount": 10000, "status": "processed", "utr": LUHN_UTR,
              "reference_id": "wd_1", "narration": f"refund {PAN}", "notes": {"memo": int(PAN)}}
    event = {"entity": "event", "event": "payout.processed", "contains": ["payout"],
             "payload": {"payout": {"entity": payout}}, "created_at": int(time.time())}
    # The event id comes in a header the signature does not cover: anyone could put a card number there.
    razorpay_post(client, event, event_id=f"evt_{PAN}")
    (row,) = inbox(db_url)
    assert PAN not in row.payload and PAN not in row.gateway_event_id
    stored = json.loads(row.payload)["payload"]["payout"]["entity"]
    assert stored["utr"] == LUHN_UTR and stored["id"] == "pout_1" and stored["amount"] == 10000
    assert stored["narration"] == "refund [card ****4242]" and stored["notes"] == {"memo": "[card ****4242]"}
    assert row.gateway_event_id == "evt_[card ****4242]"
