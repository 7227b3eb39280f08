"""The sandbox's cheap paths give what the plain ones gave: webhook bodies made at delivery are the events
as emitted, deliveries with no URL are still listed, and its copy helpers are deep copies."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway_sandbox.core import json_copy, public_copy
from gateway_sandbox.razorpay.events import emit_event
from gateway_sandbox.server import SandboxServer
from gateway_sandbox.stripe.events import sign_payload
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import Receiver

AUTH = {"Authorization": "Bearer sk_test_sandbox"}


@pytest.fixture
def client(sandbox: SandboxServer) -> FlaskClient:
    return sandbox.app.test_client()


@pytest.fixture
def receiver(client: FlaskClient) -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        client.post("/_sandbox/webhooks", json={"stripe_webhook_url": None, "razorpay_webhook_url": None,
                                                "paused": False})
        r.close()


def test_a_body_made_at_delivery_is_the_event_as_emitted(
    client: FlaskClient, sandbox: SandboxServer, receiver: Receiver
) -> None:
    client.post("/_sandbox/webhooks", json={"paused": True})
    before = int(time.time())
    created = client.post("/stripe/v1/payment_intents", headers=AUTH,
                          data={"amount": "1000", "currency": "inr", "payment_method": "pm_card_visa"}).get_json()
    confirmed = client.post(f"/stripe/v1/payment_intents/{created['id']}/confirm", headers=AUTH).get_json()
    assert (created["status"], confirmed["status"]) == ("requires_confirmation", "succeeded")
    # The intent has changed since its first event; no URL was configured when the events were emitted.
    client.post("/_sandbox/webhooks", json={"stripe_webhook_url": receiver.url, "paused": False})
    receiver.wait_for(3, timeout=5.0)
    first_headers, first_body = receiver.received[0]
    event = json.loads(first_body)
    assert event["type"] == "payment_intent.created"
    assert event["data"]["object"] == created
    assert first_body == json.dumps(client.get(f"/stripe/v1/events/{event['id']}", headers=AUTH).get_json()).encode()
    # Signed with the emission's time, over the bytes sent.
    t = int(first_headers["Stripe-Signature"].split(",")[0][2:])
    assert before <= t <= int(time.time())
    assert first_headers["Stripe-Signature"] == sign_payload(first_body, sandbox.config.stripe_webhook_secret, t)
    assert [json.loads(b)["type"] for _, b in receiver.received] == [
        "payment_intent.created", "charge.succeeded", "payment_intent.succeeded"]


def test_deliveries_without_a_url_are_listed_and_never_serialised(client: FlaskClient, sandbox: SandboxServer) -> None:
    client.post("/_sandbox/webhooks", json={"duplicate": 1})
    client.post("/stripe/v1/payment_intents", headers=AUTH,
                data={"amount": "1000", "currency": "inr", "payment_method": "pm_card_visa", "confirm": "true"})
    log = sandbox.sandbox.webhooks.log
    wait_for(lambda: all(d.error for d in log), timeout=5.0, what="every delivery attempted")
    rows = client.get("/_sandbox/webhooks/deliveries?gateway=stripe").get_json()
    assert [r["type"] for r in rows] == [t for t in ("payment_intent.created", "charge.succeeded",
                                                     "payment_intent.succeeded") for _ in range(2)]
    assert all(r["error"] == "no webhook url configured" and r["attempts"] == 0 and not r["delivered"] for r in rows)
    assert all(d.payload._made is None for d in log)
    # Read anyway, a body is the stored event; a duplicate has the same body and its own headers.
    original, duplicate = log[0], log[1]
    assert original.body == duplicate.body == json.dumps(sandbox.sandbox.store.get(original.event_id)).encode()
    assert original.headers == duplicate.headers and original.headers is not duplicate.headers


def test_a_razorpay_body_is_its_envelope_signed(sandbox: SandboxServer) -> None:
    payment = {"id": "pay_x", "entity": "payment", "amount": 100, "notes": {"a": "b"}, "_private": 1}
    with sandbox.app.app_context():
        emit_event(sandbox.sandbox, "payment.captured", {"payment": payment})
    payment["notes"]["a"] = "changed"
    delivery = sandbox.sandbox.webhooks.log[-1]
    envelope = json.loads(delivery.body)
    assert envelope["payload"]["payment"]["entity"] == {"id": "pay_x", "entity": "payment", "amount": 100,
                                                        "notes": {"a": "b"}}
    assert delivery.body == json.dumps(envelope, separators=(",", ":")).encode()
    secret = sandbox.config.razorpay_webhook_secret.encode()
    assert delivery.headers["X-Razorpay-Signature"] == hmac.new(secret, delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Razorpay-Event-Id"] == delivery.event_id


PLAIN: list[Any] = [
    {}, [], (), "", 0, -1, 10**30, 1.5, -0.0, 1e300, True, False, None, "é \n \" \\ \u2028 \U0001f600",
    {"a": {"b": [1, {"c": []}, {}, ()], "d": None}, "e": [[[]]], "f": "x"},
    [1, "two", 3.0, None, True, False, {"k": (1, [2])}],
]


@pytest.mark.parametrize("value", [*PLAIN, {"s": {1, 2}, "t": (1, [2])}, [{"_keep": 1}]])
def test_json_copy_is_a_deep_copy(value: Any) -> None:
    copied = json_copy(value)
    assert copied == copy.deepcopy(value) and type(copied) is type(value)
    if isinstance(value, dict | list) and value:
        assert copied is not value
        assert json.dumps(copied, default=sorted) == json.dumps(value, default=sorted)


def test_public_copy_drops_private_fields_and_shares_nothing() -> None:
    obj: dict[str, Any] = {"id": "pi_1", "_secret": "x", "metadata": {"a": "1"}, "items": [{"b": [1]}]}
    public = public_copy(obj)
    assert public == {"id": "pi_1", "metadata": {"a": "1"}, "items": [{"b": [1]}]}
    obj["metadata"]["a"] = "2"
    obj["items"][0]["b"].append(2)
    assert public == {"id": "pi_1", "metadata": {"a": "1"}, "items": [{"b": [1]}]}
