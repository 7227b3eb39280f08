"""A gateway's 429 is retried inside the adapter with the same idempotency key: through the official
SDKs against the sandbox, with its `error` fault answering 429 the first times."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from gateway_sandbox.server import SandboxServer
from payment_service.gateways.base import ChargeRequest, ChargeStatus, GatewayUnavailableError, idempotency_key_for
from payment_service.gateways.razorpay_gateway import RazorpayGateway
from payment_service.gateways.stripe_gateway import StripeGateway

FAST = (0.01, 0.02, 0.04)


def fault(sandbox: SandboxServer, **rule: Any) -> None:
    resp = requests.post(sandbox.url + "/_sandbox/faults", json=rule, timeout=5)
    assert resp.status_code == 201, resp.text


def request(token: str) -> ChargeRequest:
    reference = f"pay_rl{time.time_ns()}"
    return ChargeRequest(reference, 50000, "INR", idempotency_key_for(reference, "charge"), token)


def test_stripe_429_is_retried_with_the_same_key(sandbox: SandboxServer) -> None:
    gateway = StripeGateway("sk_test_rl", "whsec", api_base=sandbox.stripe_api_base, timeout=5,
                            rate_limit_waits=FAST)
    fault(sandbox, mode="error", status=429, method="POST", path="/v1/payment_intents$", remaining=2)
    req = request("pm_card_visa")
    result = gateway.charge(req)
    assert result.status is ChargeStatus.SUCCEEDED
    intents = sandbox.sandbox.store.find(lambda o: o.get("object") == "payment_intent")
    assert [pi["id"] for pi in intents] == [result.gateway_payment_id]
    keys = [key for _, key in sandbox.sandbox.idempotency.entries]
    assert keys == [req.idempotency_key]  # the one call that got through carried our key


def test_stripe_429_that_persists_is_unavailable(sandbox: SandboxServer) -> None:
    gateway = StripeGateway("sk_test_rl", "whsec", api_base=sandbox.stripe_api_base, timeout=5,
                            rate_limit_waits=FAST)
    fault(sandbox, mode="error", status=429, path="/stripe/", remaining=None)
    with pytest.raises(GatewayUnavailableError) as info:
        gateway.charge(request("pm_card_visa"))
    assert info.value.http_status == 429
    assert sandbox.sandbox.store.find(lambda o: o.get("object") == "payment_intent") == []


def test_razorpay_429_is_retried(sandbox: SandboxServer) -> None:
    gateway = RazorpayGateway("rzp_test_rl", "secret", sandbox.config.razorpay_webhook_secret,
                              api_base=sandbox.razorpay_api_base, timeout=5, rate_limit_waits=FAST)
    fault(sandbox, mode="error", status=429, method="POST", path="/v1/orders$", remaining=1)
    req = request("tok_rzp_success")
    result = gateway.charge(req)
    assert result.status is ChargeStatus.SUCCEEDED
    orders = sandbox.sandbox.store.find(lambda o: o.get("entity") == "order" and o.get("receipt") == req.reference)
    assert len(orders) == 1
