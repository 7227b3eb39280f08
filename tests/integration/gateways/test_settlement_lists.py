"""The adapters' day listings (settlement reconciliation) through the SDKs against the sandbox: every page,
exactly the objects created in [start, end), and the list endpoints' parameters checked as the real APIs do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import razorpay
import requests
import stripe

from gateway_sandbox.server import SandboxServer
from payment_service.gateways.base import ChargeStatus, RefundStatus
from payment_service.gateways.razorpay_gateway import RazorpayGateway
from payment_service.gateways.stripe_gateway import StripeGateway

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 20, tzinfo=UTC)
END = START + timedelta(days=1)
# Inside the day: 250 objects (three pages of 100) and both edges; outside: the second before and midnight after.
INSIDE = [START, END - timedelta(seconds=1)] + [START + timedelta(seconds=300 * i + 7) for i in range(248)]
OUTSIDE = [START - timedelta(seconds=1), END]


def _ts(when: datetime) -> int:
    return int(when.timestamp())


def test_stripe_lists_every_charge_and_refund_of_the_day(sandbox: SandboxServer) -> None:
    items = [{"amount": 1000 + i, "currency": "usd", "metadata": {"payment_id": f"pay_{i}"}, "created": _ts(when),
              "refunds": [{"amount": 10, "metadata": {"refund_id": f"re_{i}"}, "created": _ts(when)}] if i % 50 == 0
              else []}
             for i, when in enumerate(INSIDE + OUTSIDE)]
    made = requests.post(f"{sandbox.url}/stripe/_admin/bulk/payment_intents", json={"items": items}, timeout=30)
    assert made.status_code == 200, made.text
    gw = StripeGateway("sk_test_x", "whsec_x", api_base=sandbox.stripe_api_base)

    charges = list(gw.list_charges(START, END))
    assert len(charges) == len(INSIDE) == len({c.gateway_payment_id for c in charges})
    assert {c.reference for c in charges} == {f"pay_{i}" for i in range(len(INSIDE))}
    assert all(c.status is ChargeStatus.SUCCEEDED and c.currency == "USD" for c in charges)
    assert [c.created_at for c in charges] == sorted((c.created_at for c in charges), reverse=True)  # newest first
    refunds = list(gw.list_refunds(START, END))
    assert sorted(r.reference or "" for r in refunds) == sorted(f"re_{i}" for i in range(0, len(INSIDE), 50))
    assert all(r.status is RefundStatus.SUCCEEDED and r.gateway_payment_id for r in refunds)

    client = stripe.StripeClient("sk_test_x", base_addresses={"api": sandbox.stripe_api_base})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.list({"limit": 101})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.list({"starting_after": "pi_unknown"})
    # The SDK's own auto-pagination walks the same pages.
    listed = client.v1.payment_intents.list({"created": {"gte": _ts(START), "lt": _ts(END)}, "limit": 100})
    assert sum(1 for _ in listed.auto_paging_iter()) == len(INSIDE)


def test_razorpay_lists_every_payment_and_refund_of_the_day(sandbox: SandboxServer) -> None:
    items = [{"amount": 10000 + i, "currency": "INR", "receipt": f"pay_{i}", "notes": {"payment_id": f"pay_{i}"},
              "created_at": _ts(when),
              "refunds": [{"amount": 100, "receipt": f"re_{i}", "created_at": _ts(when)}] if i % 50 == 0 else []}
             for i, when in enumerate(INSIDE + OUTSIDE)]
    made = requests.post(f"{sandbox.url}/razorpay/_admin/bulk/payments", json={"items": items}, timeout=30)
    assert made.status_code == 200, made.text
    gw = RazorpayGateway("rzp_test_x", "secret", "whsec_x", api_base=sandbox.razorpay_api_base)

    charges = list(gw.list_charges(START, END))
    assert len(charges) == len(INSIDE) == len({c.gateway_payment_id for c in charges})
    assert {c.reference for c in charges} == {f"pay_{i}" for i in range(len(INSIDE))}
    assert all(c.status is ChargeStatus.SUCCEEDED and c.currency == "INR" for c in charges)
    refunds = list(gw.list_refunds(START, END))
    assert sorted(r.reference or "" for r in refunds) == sorted(f"re_{i}" for i in range(0, len(INSIDE), 50))

    client = razorpay.Client(auth=("rzp_test_x", "secret"), base_url=sandbox.razorpay_api_base)
    with pytest.raises(razorpay.errors.BadRequestError):
        client.payment.all({"count": 101})
    with pytest.raises(razorpay.errors.BadRequestError):
        client.payment.all({"from": 12})
    # `to` is inclusive at Razorpay: the second at the end of the window is in it.
    edge = client.payment.all({"from": _ts(END - timedelta(seconds=1)), "to": _ts(END)})
    assert edge["count"] == 2
