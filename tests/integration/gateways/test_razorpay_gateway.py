"""The Razorpay adapter, through the official SDK, against the gateway sandbox's Razorpay API."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import razorpay
import requests

from gateway_sandbox.server import SandboxServer, free_port
from payment_service.domain.ids import new_id
from payment_service.gateways.base import (
    Beneficiary,
    ChargeRequest,
    ChargeStatus,
    GatewayError,
    GatewayUnavailableError,
    InvalidWebhook,
    PayoutRequest,
    PayoutStatus,
    RefundStatus,
    idempotency_key_for,
)
from payment_service.gateways.razorpay_gateway import (
    REFUND_KEY_HEADER,
    RazorpayAPIError,
    RazorpayGateway,
    payout_idempotency_key,
    refund_idempotency_key,
)

KEY_ID = "rzp_test_sandbox"
KEY_SECRET = "sandbox_key_secret"
# Razorpay's public documentation values for bank payouts; nothing real.
ACCOUNT_NUMBER = "765432123456789"
IFSC = "HDFC0000053"


@pytest.fixture
def gateway(sandbox: SandboxServer) -> RazorpayGateway:
    return RazorpayGateway(
        KEY_ID, KEY_SECRET, sandbox.config.razorpay_webhook_secret, api_base=sandbox.razorpay_api_base, timeout=5
    )


@pytest.fixture
def sdk(sandbox: SandboxServer) -> razorpay.Client:
    """The bare SDK, to look at the sandbox's state the way Razorpay's dashboard would."""
    return razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=sandbox.razorpay_api_base)


def charge_request(token: str = "tok_rzp_success", amount: int = 50000, **kwargs: Any) -> ChargeRequest:
    reference = kwargs.pop("reference", None) or new_id("pay")
    return ChargeRequest(
        reference=reference,
        amount=amount,
        currency=kwargs.pop("currency", "INR"),
        idempotency_key=idempotency_key_for(reference, "charge"),
        token=token,
        **kwargs,
    )


def add_fault(sandbox: SandboxServer, **rule: Any) -> None:
    resp = requests.post(sandbox.url + "/_sandbox/faults", json=rule, timeout=5)
    assert resp.status_code == 201, resp.text


def admin(sandbox: SandboxServer, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = requests.post(f"{sandbox.razorpay_api_base}/_admin/{path}", json=body or {}, timeout=5)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


# ---------------------------------------------------------------- customers and saved cards


def test_create_customer_is_idempotent_per_user(gateway: RazorpayGateway) -> None:
    first = gateway.create_customer("u_1", idempotency_key="u_1:customer")
    again = gateway.create_customer("u_1", idempotency_key="u_1:customer")
    other = gateway.create_customer("u_2", idempotency_key="u_2:customer")
    assert first.startswith("cust_")
    assert again == first
    assert other != first


def test_attach_charge_and_detach_saved_card(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    customer = gateway.create_customer("u_attach", idempotency_key="k")
    saved = gateway.attach_payment_method(customer, "tok_rzp_success", idempotency_key="pm_1:attach")
    assert saved.token_ref.startswith("token_")
    assert saved.customer_ref == customer
    assert (saved.card.brand, saved.card.last4, saved.card.exp_month, saved.card.exp_year) == ("visa", "1111", 12, 2030)
    # The same card attached again is the same token (Razorpay keeps one per card and customer).
    assert gateway.attach_payment_method(customer, "tok_rzp_success", idempotency_key="pm_2:attach") == saved
    assert gateway.attach_payment_method(customer, saved.token_ref, idempotency_key="k") == saved

    result = gateway.charge(charge_request(saved.token_ref, customer_ref=customer))
    assert result.status is ChargeStatus.SUCCEEDED
    assert sdk.payment.fetch(result.gateway_payment_id)["token_id"] == saved.token_ref

    gateway.detach_payment_method(saved)
    gateway.detach_payment_method(saved)  # twice is not an error
    assert sdk.token.all(customer)["count"] == 0
    with pytest.raises(GatewayError) as exc:
        gateway.charge(charge_request(saved.token_ref, customer_ref=customer))
    assert not isinstance(exc.value, GatewayUnavailableError)


def test_saved_token_of_another_customer_is_refused(gateway: RazorpayGateway) -> None:
    alice = gateway.create_customer("u_alice", idempotency_key="k")
    bob = gateway.create_customer("u_bob", idempotency_key="k")
    saved = gateway.attach_payment_method(alice, "tok_rzp_mastercard", idempotency_key="k")
    with pytest.raises(GatewayError) as exc:
        gateway.charge(charge_request(saved.token_ref, customer_ref=bob))
    assert exc.value.http_status == 400


def test_attach_unknown_token_is_refused(gateway: RazorpayGateway) -> None:
    customer = gateway.create_customer("u_x", idempotency_key="k")
    with pytest.raises(GatewayError) as exc:
        gateway.attach_payment_method(customer, "tok_rzp_nonsense", idempotency_key="k")
    assert exc.value.http_status == 400


# ---------------------------------------------------------------- charges


def test_charge_succeeds_and_is_captured(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    request = charge_request("tok_rzp_success", amount=50000)
    result = gateway.charge(request)
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.raw_status == "captured"
    assert (result.amount, result.currency, result.reference) == (50000, "INR", request.reference)
    assert result.card is not None and (result.card.brand, result.card.last4) == ("visa", "1111")
    payment = sdk.payment.fetch(result.gateway_payment_id)
    assert payment["captured"] is True and payment["notes"]["payment_id"] == request.reference
    order = sdk.order.fetch(payment["order_id"])
    assert (order["receipt"], order["status"], order["amount_paid"]) == (request.reference, "paid", 50000)
    assert gateway.retrieve_charge(result.gateway_payment_id).status is ChargeStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("token", "failure_code"),
    [("tok_rzp_declined", "card_declined"), ("tok_rzp_insufficient_funds", "insufficient_funds")],
)
def test_declined_charges_fail_with_reason(
    gateway: RazorpayGateway, sdk: razorpay.Client, token: str, failure_code: str
) -> None:
    result = gateway.charge(charge_request(token))
    assert result.status is ChargeStatus.FAILED
    assert result.failure_code == failure_code
    assert result.failure_message
    assert result.gateway_payment_id is not None
    payment = sdk.payment.fetch(result.gateway_payment_id)
    assert payment["status"] == "failed" and payment["error_code"] == "BAD_REQUEST_ERROR"
    # A retry answers from the failed payment; it does not try the card again.
    again = gateway.charge(charge_request(token, reference=result.reference))
    assert again.gateway_payment_id == result.gateway_payment_id
    assert sdk.order.payments(payment["order_id"])["count"] == 1


def test_3ds_then_success(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    request = charge_request("tok_rzp_3ds_success", return_url="https://wallet.example/after-3ds?x=1")
    result = gateway.charge(request)
    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.redirect_url is not None and result.gateway_payment_id is not None
    assert gateway.retrieve_charge(result.gateway_payment_id).status is ChargeStatus.REQUIRES_ACTION

    page = requests.get(result.redirect_url, timeout=5)
    assert page.status_code == 200 and "Complete authentication" in page.text and "500.00 INR" in page.text
    done = requests.post(result.redirect_url, data={"result": "approve"}, allow_redirects=False, timeout=5)
    assert done.status_code == 303
    location = urlsplit(done.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "wallet.example", "/after-3ds")
    params = parse_qs(location.query)
    assert params["x"] == ["1"] and params["razorpay_payment_id"] == [result.gateway_payment_id]
    order_id = params["razorpay_order_id"][0]
    expected = hmac.new(KEY_SECRET.encode(), f"{order_id}|{result.gateway_payment_id}".encode(), hashlib.sha256)
    assert params["razorpay_signature"] == [expected.hexdigest()]
    # The callback signature verifies with the SDK's own helper, as a merchant would check it.
    assert sdk.utility.verify_payment_signature(
        {
            "razorpay_order_id": order_id,
            "razorpay_payment_id": result.gateway_payment_id,
            "razorpay_signature": params["razorpay_signature"][0],
        }
    )

    assert gateway.retrieve_charge(result.gateway_payment_id).status is ChargeStatus.SUCCEEDED
    found = gateway.find_charge(request.reference)
    assert found is not None and found.status is ChargeStatus.SUCCEEDED
    assert found.gateway_payment_id == result.gateway_payment_id


@pytest.mark.parametrize(("token", "button"), [("tok_rzp_3ds_failure", "approve"), ("tok_rzp_3ds_success", "fail")])
def test_3ds_then_failure(gateway: RazorpayGateway, token: str, button: str) -> None:
    result = gateway.charge(charge_request(token, return_url="https://wallet.example/after-3ds"))
    assert result.status is ChargeStatus.REQUIRES_ACTION and result.redirect_url
    done = requests.post(result.redirect_url, data={"result": button}, allow_redirects=False, timeout=5)
    assert done.status_code == 303
    params = parse_qs(urlsplit(done.headers["Location"]).query)
    assert params["error[code]"] == ["BAD_REQUEST_ERROR"]
    assert params["error[reason]"] == ["authentication_failed"]
    assert result.gateway_payment_id is not None
    after = gateway.retrieve_charge(result.gateway_payment_id)
    assert after.status is ChargeStatus.FAILED and after.failure_code == "authentication_failed"


def test_3ds_retry_after_lost_redirect_makes_a_new_attempt_and_only_one_can_capture(
    gateway: RazorpayGateway, sdk: razorpay.Client
) -> None:
    request = charge_request("tok_rzp_3ds_success")
    first = gateway.charge(request)
    second = gateway.charge(request)  # the first redirect URL was lost: a fresh attempt on the same order
    assert first.redirect_url and second.redirect_url and first.redirect_url != second.redirect_url
    requests.post(second.redirect_url, data={"result": "approve"}, timeout=5)
    requests.post(first.redirect_url, data={"result": "approve"}, timeout=5)
    assert first.gateway_payment_id is not None and second.gateway_payment_id is not None
    assert gateway.retrieve_charge(second.gateway_payment_id).status is ChargeStatus.SUCCEEDED
    assert gateway.retrieve_charge(first.gateway_payment_id).status is ChargeStatus.FAILED
    found = gateway.find_charge(request.reference)
    assert found is not None and found.gateway_payment_id == second.gateway_payment_id
    # And once paid, another retry answers from the captured payment.
    assert gateway.charge(request).gateway_payment_id == second.gateway_payment_id


def test_authorized_payment_is_captured_by_the_adapter(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    # An order made elsewhere with manual capture: charge() finds it by receipt and captures.
    request = charge_request("tok_rzp_rupay", amount=12300)
    sdk.order.create({"amount": 12300, "currency": "INR", "receipt": request.reference, "payment_capture": 0})
    result = gateway.charge(request)
    assert result.status is ChargeStatus.SUCCEEDED and result.raw_status == "captured"
    assert result.card is not None and result.card.brand == "rupay"


def test_same_reference_with_other_amount_is_refused(gateway: RazorpayGateway) -> None:
    request = charge_request(amount=10000)
    gateway.charge(request)
    with pytest.raises(GatewayError) as exc:
        gateway.charge(charge_request(amount=20000, reference=request.reference))
    assert exc.value.code == "reference_mismatch"


def test_idempotent_retry_never_charges_twice(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    request = charge_request("tok_rzp_success", amount=25000)
    first = gateway.charge(request)
    second = gateway.charge(request)
    assert second.status is ChargeStatus.SUCCEEDED
    assert second.gateway_payment_id == first.gateway_payment_id
    orders = sdk.order.all({"receipt": request.reference})
    assert orders["count"] == 1
    assert sdk.order.payments(orders["items"][0]["id"])["count"] == 1


def test_lost_response_on_payment_creation_then_find_charge(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    request = charge_request("tok_rzp_success", amount=30000)
    add_fault(sandbox, mode="lost_response", path=r"^/razorpay/v1/payments/create/", method="POST")
    with pytest.raises(GatewayUnavailableError) as exc:
        gateway.charge(request)
    assert exc.value.http_status == 500
    found = gateway.find_charge(request.reference)
    assert found is not None
    assert found.status is ChargeStatus.SUCCEEDED and found.reference == request.reference and found.amount == 30000
    # The retry answers from the payment the lost response hid: still one payment.
    retried = gateway.charge(request)
    assert retried.gateway_payment_id == found.gateway_payment_id
    orders = sdk.order.all({"receipt": request.reference})
    assert orders["count"] == 1 and sdk.order.payments(orders["items"][0]["id"])["count"] == 1


def test_lost_response_on_order_creation_reuses_the_order(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    request = charge_request()
    add_fault(sandbox, mode="lost_response", path=r"^/razorpay/v1/orders$", method="POST")
    with pytest.raises(GatewayUnavailableError):
        gateway.charge(request)
    assert gateway.find_charge(request.reference) is None  # an order, but nothing charged
    assert gateway.charge(request).status is ChargeStatus.SUCCEEDED
    assert sdk.order.all({"receipt": request.reference})["count"] == 1


def test_find_charge_unknown_reference(gateway: RazorpayGateway) -> None:
    assert gateway.find_charge(new_id("pay")) is None


def test_cancel_charge(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    pending = gateway.charge(charge_request("tok_rzp_3ds_success"))
    assert pending.gateway_payment_id is not None
    canceled = gateway.cancel_charge(pending.gateway_payment_id, idempotency_key="pay_x:cancel")
    assert canceled.status is ChargeStatus.CANCELED
    assert sdk.payment.fetch(pending.gateway_payment_id)["notes"]["cancelled"] == "true"

    captured = gateway.charge(charge_request())
    assert captured.gateway_payment_id is not None
    again = gateway.cancel_charge(captured.gateway_payment_id, idempotency_key="pay_y:cancel")
    assert again.status is ChargeStatus.SUCCEEDED


def test_three_decimal_currency_amount_must_end_in_zero(gateway: RazorpayGateway) -> None:
    with pytest.raises(GatewayError) as exc:
        gateway.charge(charge_request(amount=12345, currency="KWD"))
    assert exc.value.code == "amount_not_supported"


# ---------------------------------------------------------------- unavailability


def test_injected_503_is_unavailable(gateway: RazorpayGateway, sandbox: SandboxServer) -> None:
    add_fault(sandbox, mode="error", status=503, path=r"^/razorpay/v1/orders")
    with pytest.raises(GatewayUnavailableError) as exc:
        gateway.charge(charge_request())
    assert exc.value.http_status == 503


def test_injected_4xx_is_not_unavailable(gateway: RazorpayGateway, sandbox: SandboxServer) -> None:
    add_fault(sandbox, mode="error", status=400, path=r"^/razorpay/v1/orders")
    with pytest.raises(GatewayError) as exc:
        gateway.charge(charge_request())
    assert not isinstance(exc.value, GatewayUnavailableError) and exc.value.http_status == 400


def test_timeout_is_unavailable(sandbox: SandboxServer) -> None:
    fast = RazorpayGateway(KEY_ID, KEY_SECRET, "s", api_base=sandbox.razorpay_api_base, timeout=0.3)
    add_fault(sandbox, mode="timeout", latency_ms=1000, path=r"^/razorpay/v1/orders")
    started = time.monotonic()
    with pytest.raises(GatewayUnavailableError):
        fast.charge(charge_request())
    assert time.monotonic() - started < 0.9


def test_connection_refused_is_unavailable() -> None:
    down = RazorpayGateway(KEY_ID, KEY_SECRET, "s", api_base=f"http://127.0.0.1:{free_port()}/razorpay", timeout=1)
    with pytest.raises(GatewayUnavailableError):
        down.retrieve_charge("pay_x")


def test_wrong_api_key_is_refused(sandbox: SandboxServer) -> None:
    sandbox.config.razorpay_key_id = KEY_ID
    try:
        other = RazorpayGateway("rzp_test_other", KEY_SECRET, "s", api_base=sandbox.razorpay_api_base)
        with pytest.raises(GatewayError) as exc:
            other.charge(charge_request())
        assert exc.value.http_status == 401 and exc.value.code == "authentication_error"
    finally:
        sandbox.config.razorpay_key_id = None


# ---------------------------------------------------------------- refunds


def test_partial_then_full_refund_then_over_refund(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    charged = gateway.charge(charge_request(amount=10000))
    assert charged.gateway_payment_id is not None
    pid = charged.gateway_payment_id

    part = gateway.refund(pid, 4000, "INR", reference="re_1", idempotency_key="re_1:refund")
    assert part.status is RefundStatus.SUCCEEDED and part.amount == 4000 and part.gateway_refund_id.startswith("rfnd_")
    # Same refund id again: the same refund, not a second one.
    assert gateway.refund(pid, 4000, "INR", reference="re_1", idempotency_key="re_1:refund") == part
    assert sdk.payment.fetch(pid)["amount_refunded"] == 4000

    with pytest.raises(GatewayError) as exc:
        gateway.refund(pid, 6001, "INR", reference="re_2", idempotency_key="re_2:refund")
    assert exc.value.code == "refund_exceeds_captured" and exc.value.http_status == 400

    rest = gateway.refund(pid, 6000, "INR", reference="re_3", idempotency_key="re_3:refund")
    assert rest.status is RefundStatus.SUCCEEDED
    payment = sdk.payment.fetch(pid)
    assert (payment["status"], payment["amount_refunded"], payment["refund_status"]) == ("refunded", 10000, "full")
    assert gateway.retrieve_charge(pid).status is ChargeStatus.SUCCEEDED
    assert gateway.retrieve_refund(rest.gateway_refund_id) == rest
    assert gateway.retrieve_refund(part.gateway_refund_id, pid) == part

    with pytest.raises(GatewayError) as exc:
        gateway.refund(pid, 100, "INR", reference="re_4", idempotency_key="re_4:refund")
    assert exc.value.code == "refund_exceeds_captured"


def test_refund_of_failed_payment_is_refused(gateway: RazorpayGateway) -> None:
    failed = gateway.charge(charge_request("tok_rzp_declined"))
    assert failed.gateway_payment_id is not None
    with pytest.raises(GatewayError) as exc:
        gateway.refund(failed.gateway_payment_id, 100, "INR", reference="re_f", idempotency_key="k")
    assert exc.value.http_status == 400


def test_refund_after_lost_response_is_found_not_repeated(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    charged = gateway.charge(charge_request(amount=10000))
    assert charged.gateway_payment_id is not None
    add_fault(sandbox, mode="lost_response", path=r"/refund$", method="POST")
    with pytest.raises(GatewayUnavailableError):
        gateway.refund(charged.gateway_payment_id, 10000, "INR", reference="re_lost", idempotency_key="k")
    again = gateway.refund(charged.gateway_payment_id, 10000, "INR", reference="re_lost", idempotency_key="k")
    assert again.status is RefundStatus.SUCCEEDED
    assert sdk.payment.fetch_multiple_refund(charged.gateway_payment_id)["count"] == 1


def refund_scope() -> str:
    """Where the sandbox keeps X-Refund-Idempotency keys (per API key id)."""
    return f"razorpay:refund:{KEY_ID}"


def test_refund_idempotency_key_mapping() -> None:
    assert refund_idempotency_key("550e8400-e29b-41d4-a716-446655440000") == "550e8400-e29b-41d4-a716-446655440000"
    assert refund_idempotency_key("refund_key_1") == "refund_key_1"
    for ours in ("re_01jd3k5x9q2w7m4n8b6v0c1z2y:refund", "k", "short", "x" * 37):
        mapped = refund_idempotency_key(ours)
        assert mapped == refund_idempotency_key(ours)  # deterministic: every retry sends the same key
        assert len(mapped) == 36 and set(mapped) <= set("0123456789abcdef-")
    assert refund_idempotency_key("re_1:refund") != refund_idempotency_key("re_2:refund")


def test_adapter_sends_refund_idempotency_derived_from_our_key(
    gateway: RazorpayGateway, sandbox: SandboxServer
) -> None:
    charged = gateway.charge(charge_request(amount=10000))
    assert charged.gateway_payment_id is not None
    gateway.refund(charged.gateway_payment_id, 1000, "INR", reference="re_hdr", idempotency_key="re_hdr:refund")
    assert (refund_scope(), refund_idempotency_key("re_hdr:refund")) in sandbox.sandbox.idempotency.entries


def test_sandbox_refund_idempotency_same_key_other_body_in_progress(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    charged = gateway.charge(charge_request(amount=10000))
    pid = charged.gateway_payment_id
    assert pid is not None
    key = "0b5f8c1e-6f0e-4a43-9d5e-5a3c8f2b7d11"
    body = {"amount": 2000, "speed": "normal", "receipt": "re_sdk"}
    first = sdk.payment.refund(pid, dict(body), headers={REFUND_KEY_HEADER: key})
    # Same key, same body: the same refund again, not a second one.
    assert sdk.payment.refund(pid, dict(body), headers={REFUND_KEY_HEADER: key}) == first
    assert sdk.payment.fetch(pid)["amount_refunded"] == 2000
    # Same key, another body: refused, nothing refunded.
    with pytest.raises(razorpay.errors.BadRequestError, match="idempotency key"):
        sdk.payment.refund(pid, {**body, "amount": 3000}, headers={REFUND_KEY_HEADER: key})
    # A key Razorpay does not accept (under 10 characters, or other characters).
    for bad in ("short", "has:colon-in-it"):
        with pytest.raises(razorpay.errors.BadRequestError, match="idempotency key"):
            sdk.payment.refund(pid, {"amount": 100}, headers={REFUND_KEY_HEADER: bad})
    # The same key while the first request is still running: 409.
    busy = "busy-refund-key-0001"
    assert sandbox.sandbox.idempotency.begin(refund_scope(), busy) is None
    resp = requests.post(f"{sandbox.razorpay_api_base}/v1/payments/{pid}/refund", json={"amount": 100},
                         headers={REFUND_KEY_HEADER: busy}, auth=(KEY_ID, KEY_SECRET), timeout=5)
    assert resp.status_code == 409 and "in progress" in resp.json()["error"]["description"], resp.text
    sandbox.sandbox.idempotency.finish(refund_scope(), busy, None)
    # Without the header a refund is made each time (the header is optional at Razorpay).
    sdk.payment.refund(pid, {"amount": 100})
    sdk.payment.refund(pid, {"amount": 100})
    assert sdk.payment.fetch(pid)["amount_refunded"] == 2200
    assert sdk.payment.fetch_multiple_refund(pid)["count"] == 3


def test_concurrent_refunds_with_the_same_key_make_one_refund(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    """Two callers (a request and a worker, two workers) both look the receipt up, find nothing, and
    both create: X-Refund-Idempotency makes it one refund, and both get it."""
    charged = gateway.charge(charge_request(amount=10000))
    pid = charged.gateway_payment_id
    assert pid is not None
    # Razorpay is slow to create: both creations are sent before either is made.
    add_fault(sandbox, mode="latency", latency_ms=500, path=rf"^/razorpay/v1/payments/{pid}/refund$", method="POST",
              remaining=2)
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def refund() -> None:
        barrier.wait()
        try:
            results.append(gateway.refund(pid, 4000, "INR", reference="re_race", idempotency_key="re_race:refund"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=refund) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    refunds = sdk.payment.fetch_multiple_refund(pid)
    assert refunds["count"] == 1, refunds
    assert sdk.payment.fetch(pid)["amount_refunded"] == 4000
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].gateway_refund_id == refunds["items"][0]["id"]


def test_refund_waits_for_the_same_key_in_progress_elsewhere(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    charged = gateway.charge(charge_request(amount=10000))
    pid = charged.gateway_payment_id
    assert pid is not None
    idem = sandbox.sandbox.idempotency
    key = refund_idempotency_key("re_busy:refund")
    # Still running elsewhere for longer than the adapter waits: the outcome is unknown, retry later.
    assert idem.begin(refund_scope(), key) is None
    with pytest.raises(GatewayUnavailableError) as exc:
        gateway.refund(pid, 1000, "INR", reference="re_busy", idempotency_key="re_busy:refund")
    assert exc.value.http_status == 409
    assert sdk.payment.fetch_multiple_refund(pid)["count"] == 0
    # Running elsewhere, then gone without making a refund: the adapter's next try makes it, once.
    threading.Timer(0.25, idem.finish, args=(refund_scope(), key, None)).start()
    done = gateway.refund(pid, 1000, "INR", reference="re_busy", idempotency_key="re_busy:refund")
    assert done.status is RefundStatus.SUCCEEDED
    assert sdk.payment.fetch_multiple_refund(pid)["count"] == 1


# ---------------------------------------------------------------- payouts


def payout_request(mode: str, amount: int = 100000, **kwargs: Any) -> PayoutRequest:
    reference = kwargs.pop("reference", None) or new_id("wd")
    if mode == "UPI":
        beneficiary = Beneficiary(name="A Kumar", vpa="akumar@okhdfcbank")
    else:
        beneficiary = Beneficiary(name="A Kumar", account_number=ACCOUNT_NUMBER, ifsc=IFSC)
    return PayoutRequest(
        reference=reference,
        amount=amount,
        currency="INR",
        mode=mode,
        beneficiary=kwargs.pop("beneficiary", beneficiary),
        idempotency_key=idempotency_key_for(reference, "payout"),
        **kwargs,
    )


@pytest.mark.parametrize("mode", ["NEFT", "IMPS", "UPI"])
def test_payout_settles_on_demand(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client, mode: str
) -> None:
    request = payout_request(mode)
    created = gateway.create_payout(request)
    assert created.gateway_payout_id.startswith("pout_")
    assert created.status is PayoutStatus.PROCESSING and created.utr is None
    assert created.fund_account_ref is not None and created.fund_account_ref.startswith("fa_")
    assert ACCOUNT_NUMBER not in repr(created)
    kind = sdk.get(f"/v1/fund_accounts/{created.fund_account_ref}", {})["account_type"]
    assert kind == ("vpa" if mode == "UPI" else "bank_account")

    admin(sandbox, f"payouts/{created.gateway_payout_id}/settle")
    settled = gateway.retrieve_payout(created.gateway_payout_id)
    assert settled.status is PayoutStatus.SETTLED and settled.utr
    payout = sdk.get(f"/v1/payouts/{created.gateway_payout_id}", {})
    assert payout["status"] == "processed" and payout["utr"] == settled.utr

    admin(sandbox, f"payouts/{created.gateway_payout_id}/reverse", {"reason": "beneficiary account closed"})
    reversed_ = gateway.retrieve_payout(created.gateway_payout_id)
    assert reversed_.status is PayoutStatus.REVERSED and reversed_.failure_reason == "beneficiary account closed"


def test_payout_fails_on_demand(gateway: RazorpayGateway, sandbox: SandboxServer) -> None:
    created = gateway.create_payout(payout_request("IMPS"))
    admin(sandbox, f"payouts/{created.gateway_payout_id}/fail", {"reason": "invalid beneficiary account"})
    failed = gateway.retrieve_payout(created.gateway_payout_id)
    assert failed.status is PayoutStatus.FAILED and failed.failure_reason == "invalid beneficiary account"
    assert failed.utr is None
    # A failed payout cannot be settled afterwards.
    resp = requests.post(f"{sandbox.razorpay_api_base}/_admin/payouts/{created.gateway_payout_id}/settle", timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "BAD_REQUEST_ERROR"


def test_payout_auto_settle(gateway: RazorpayGateway, sandbox: SandboxServer) -> None:
    admin(sandbox, "settings", {"auto_settle_payouts": True, "auto_settle_delay_ms": 50})
    created = gateway.create_payout(payout_request("UPI"))
    assert created.status is PayoutStatus.PROCESSING
    deadline = time.monotonic() + 5
    while gateway.retrieve_payout(created.gateway_payout_id).status is PayoutStatus.PROCESSING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gateway.retrieve_payout(created.gateway_payout_id).status is PayoutStatus.SETTLED


def test_payout_idempotency_same_key_same_payout(gateway: RazorpayGateway, sdk: razorpay.Client) -> None:
    request = payout_request("NEFT")
    first = gateway.create_payout(request)
    again = gateway.create_payout(request)
    assert again.gateway_payout_id == first.gateway_payout_id
    payouts = sdk.get(
        "/v1/payouts", {"account_number": gateway.payout_account_number, "reference_id": request.reference}
    )
    assert payouts["count"] == 1


def test_payout_idempotency_other_body_is_refused(
    gateway: RazorpayGateway, sandbox: SandboxServer, sdk: razorpay.Client
) -> None:
    request = payout_request("IMPS", amount=100000)
    first = gateway.create_payout(request)
    assert first.fund_account_ref is not None
    key = payout_idempotency_key(request.idempotency_key)
    assert 4 <= len(key) <= 36 and ":" not in key
    body = {
        "account_number": gateway.payout_account_number,
        "fund_account_id": first.fund_account_ref,
        "amount": 200000,
        "currency": "INR",
        "mode": "IMPS",
        "purpose": "payout",
        "reference_id": request.reference,
    }
    with pytest.raises(razorpay.errors.BadRequestError, match="idempotency key"):
        sdk.post("/v1/payouts", body, headers={"X-Payout-Idempotency": key})
    # Through the adapter: same key, other amount -> a GatewayError, not a second payout.
    with pytest.raises(RazorpayAPIError) as exc:
        gateway.create_payout(payout_request("IMPS", amount=150000, reference=request.reference))
    assert exc.value.code == "idempotency_error"
    # Without the header RazorpayX refuses the payout.
    with pytest.raises(razorpay.errors.BadRequestError, match="Idempotency key is missing"):
        sdk.post("/v1/payouts", body)


def test_payout_after_lost_response_is_the_same_payout(gateway: RazorpayGateway, sandbox: SandboxServer) -> None:
    request = payout_request("IMPS")
    add_fault(sandbox, mode="lost_response", path=r"^/razorpay/v1/payouts$", method="POST")
    with pytest.raises(GatewayUnavailableError):
        gateway.create_payout(request)
    retried = gateway.create_payout(request)
    assert retried.status is PayoutStatus.PROCESSING
    resp = requests.get(
        f"{sandbox.razorpay_api_base}/v1/payouts",
        params={"account_number": gateway.payout_account_number, "reference_id": request.reference},
        auth=(KEY_ID, KEY_SECRET),
        timeout=5,
    )
    assert resp.json()["count"] == 1


def test_payout_bad_beneficiary_never_echoes_account_number(gateway: RazorpayGateway) -> None:
    bad = Beneficiary(name="A Kumar", account_number=ACCOUNT_NUMBER, ifsc="NOTANIFSC")
    with pytest.raises(GatewayError) as exc:
        gateway.create_payout(payout_request("NEFT", beneficiary=bad))
    assert exc.value.code == "invalid_beneficiary"
    assert ACCOUNT_NUMBER not in str(exc.value) and "6789" in str(exc.value)
    with pytest.raises(GatewayError):
        gateway.create_payout(payout_request("UPI", beneficiary=Beneficiary(name="A Kumar")))


# ---------------------------------------------------------------- webhooks


def signed(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_verify_webhook_good_signature(gateway: RazorpayGateway, sandbox: SandboxServer) -> None:
    body = json.dumps(
        {
            "entity": "event",
            "account_id": "acc_x",
            "event": "payment.captured",
            "contains": ["payment"],
            "payload": {"payment": {"entity": {"id": "pay_abc", "notes": {"payment_id": "pay_ours"}}}},
            "created_at": 1700000000,
        }
    ).encode()
    headers = {
        "x-razorpay-signature": signed(body, sandbox.config.razorpay_webhook_secret),
        "X-Razorpay-Event-Id": "evt_1",
    }
    event = gateway.verify_webhook(body, headers)
    assert (event.gateway, event.event_id, event.type) == ("razorpay", "evt_1", "payment.captured")
    assert (event.object_id, event.reference) == ("pay_abc", "pay_ours")


@pytest.mark.parametrize("case", ["bad_signature", "missing_signature", "missing_event_id", "tampered", "not_json"])
def test_verify_webhook_refuses(gateway: RazorpayGateway, sandbox: SandboxServer, case: str) -> None:
    secret = sandbox.config.razorpay_webhook_secret
    body = b'{"event": "payment.captured", "contains": [], "payload": {}}'
    headers = {"X-Razorpay-Signature": signed(body, secret), "X-Razorpay-Event-Id": "evt_1"}
    if case == "bad_signature":
        headers["X-Razorpay-Signature"] = signed(body, "some other secret")
    elif case == "missing_signature":
        del headers["X-Razorpay-Signature"]
    elif case == "missing_event_id":
        del headers["X-Razorpay-Event-Id"]
    elif case == "tampered":
        body = body.replace(b"captured", b"failed")
    elif case == "not_json":
        body = b"\xff\xfe not json"
        headers["X-Razorpay-Signature"] = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    with pytest.raises(InvalidWebhook):
        gateway.verify_webhook(body, headers)


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, event_type: str, timeout: float = 5.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for headers, body in self.received:
                    if json.loads(body).get("event") == event_type:
                        return headers, body
            time.sleep(0.02)
        raise AssertionError(f"no {event_type} webhook received")


@pytest.fixture
def receiver(sandbox: SandboxServer) -> Iterator[Receiver]:
    """A tiny local HTTP endpoint standing in for POST /webhooks/razorpay."""
    port = free_port()
    box = Receiver(url=f"http://127.0.0.1:{port}/webhooks/razorpay")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with box.lock:
                box.received.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    requests.post(sandbox.url + "/_sandbox/webhooks", json={"razorpay_webhook_url": box.url}, timeout=5)
    try:
        yield box
    finally:
        requests.post(sandbox.url + "/_sandbox/webhooks", json={"razorpay_webhook_url": None}, timeout=5)
        server.shutdown()
        server.server_close()


def test_webhooks_are_delivered_signed(gateway: RazorpayGateway, sandbox: SandboxServer, receiver: Receiver) -> None:
    request = charge_request("tok_rzp_success", amount=50000)
    charged = gateway.charge(request)

    headers, body = receiver.wait_for("payment.captured")
    assert headers["X-Razorpay-Signature"] == signed(body, sandbox.config.razorpay_webhook_secret)
    assert headers["X-Razorpay-Event-Id"]
    event = gateway.verify_webhook(body, headers)
    assert event.type == "payment.captured" and event.event_id == headers["X-Razorpay-Event-Id"]
    assert (event.object_id, event.reference) == (charged.gateway_payment_id, request.reference)
    envelope = json.loads(body)
    assert envelope["entity"] == "event" and envelope["contains"] == ["payment"]
    assert envelope["payload"]["payment"]["entity"]["status"] == "captured"
    assert isinstance(envelope["created_at"], int) and envelope["account_id"]

    assert charged.gateway_payment_id is not None
    gateway.refund(charged.gateway_payment_id, 1000, "INR", reference="re_wh", idempotency_key="k")
    headers, body = receiver.wait_for("refund.processed")
    refund_event = gateway.verify_webhook(body, headers)
    assert refund_event.object_id is not None and refund_event.object_id.startswith("rfnd_")
    assert refund_event.reference == "re_wh"

    payout_req = payout_request("IMPS")
    payout = gateway.create_payout(payout_req)
    admin(sandbox, f"payouts/{payout.gateway_payout_id}/settle")
    headers, body = receiver.wait_for("payout.processed")
    payout_event = gateway.verify_webhook(body, headers)
    assert (payout_event.object_id, payout_event.reference) == (payout.gateway_payout_id, payout_req.reference)
    assert json.loads(body)["payload"]["payout"]["entity"]["utr"]

    failed = gateway.charge(charge_request("tok_rzp_declined"))
    headers, body = receiver.wait_for("payment.failed")
    failed_event = gateway.verify_webhook(body, headers)
    assert failed_event.object_id == failed.gateway_payment_id
    assert json.loads(body)["payload"]["payment"]["entity"]["error_reason"] == "payment_failed"
    # Each delivery carries its own event id.
    event_ids = [h["X-Razorpay-Event-Id"] for h, _ in receiver.received]
    assert len(event_ids) == len(set(event_ids))


def test_3ds_outcome_webhook(gateway: RazorpayGateway, receiver: Receiver) -> None:
    request = charge_request("tok_rzp_3ds_failure")
    result = gateway.charge(request)
    assert result.redirect_url
    # Without a callback_url the page answers with the outcome itself.
    done = requests.post(result.redirect_url, data={"result": "approve"}, timeout=5)
    assert done.json()["status"] == "failed"
    headers, body = receiver.wait_for("payment.failed")
    event = gateway.verify_webhook(body, headers)
    assert (event.object_id, event.reference) == (result.gateway_payment_id, request.reference)
    assert json.loads(body)["payload"]["payment"]["entity"]["error_reason"] == "authentication_failed"


@pytest.mark.parametrize("initial", ["queued", "pending"])
def test_queued_payout_cancelled(gateway: RazorpayGateway, sandbox: SandboxServer, initial: str) -> None:
    admin(sandbox, "settings", {"initial_payout_status": initial})
    created = gateway.create_payout(payout_request("NEFT"))
    assert created.status is PayoutStatus.PROCESSING
    resp = requests.post(
        f"{sandbox.razorpay_api_base}/v1/payouts/{created.gateway_payout_id}/cancel",
        auth=(KEY_ID, KEY_SECRET),
        timeout=5,
    )
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert gateway.retrieve_payout(created.gateway_payout_id).status is PayoutStatus.FAILED


def test_step_up_asks_for_3ds_on_a_frictionless_card(gateway: RazorpayGateway) -> None:
    result = gateway.charge(charge_request("tok_rzp_success", request_three_d_secure=True))
    assert result.status is ChargeStatus.REQUIRES_ACTION and result.redirect_url
    requests.post(result.redirect_url, data={"result": "approve"}, timeout=5)
    assert result.gateway_payment_id is not None
    assert gateway.retrieve_charge(result.gateway_payment_id).status is ChargeStatus.SUCCEEDED
