"""The Stripe adapter through the official SDK against the gateway sandbox's Stripe API.

Every test goes over HTTP: StripeGateway -> stripe SDK -> sandbox (/stripe/v1/...), and webhooks
come back through the sandbox's dispatcher to a tiny receiver started here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from gateway_sandbox.server import SandboxServer, free_port
from gateway_sandbox.stripe.events import sign_payload
from payment_service.domain.cards import contains_card_number
from payment_service.gateways.base import (
    Beneficiary,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayError,
    GatewayUnavailableError,
    InvalidWebhook,
    PayoutRequest,
    RefundStatus,
    idempotency_key_for,
)
from payment_service.gateways.stripe_gateway import StripeGateway
from tests.support.webhook_receiver import Receiver

API_KEY = "sk_test_sandbox_adapter"
RETURN_URL = "https://wallet.example/after-3ds"


@pytest.fixture
def gateway(sandbox: SandboxServer) -> StripeGateway:
    return StripeGateway(API_KEY, sandbox.config.stripe_webhook_secret, api_base=sandbox.stripe_api_base, timeout=5)


_counter = iter(range(1, 10**9))


def make_request(token: str = "pm_card_visa", amount: int = 50000, currency: str = "INR", **kw: Any) -> ChargeRequest:
    payment_id = kw.pop("reference", f"pay_test{next(_counter):06d}{int(time.time() * 1000) % 10**6}")
    return ChargeRequest(
        reference=payment_id,
        amount=amount,
        currency=currency,
        idempotency_key=kw.pop("idempotency_key", idempotency_key_for(payment_id, "charge")),
        token=token,
        return_url=kw.pop("return_url", RETURN_URL),
        **kw,
    )


def stripe_objects(sandbox: SandboxServer, kind: str) -> list[dict[str, Any]]:
    return sandbox.sandbox.store.find(lambda o: o.get("object") == kind)


def admin(sandbox: SandboxServer, method: str, path: str, **kw: Any) -> Any:
    resp = requests.request(method, sandbox.url + "/_sandbox" + path, timeout=5, **kw)
    assert resp.status_code < 300, resp.text
    return resp.json()


def deliveries(sandbox: SandboxServer) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = admin(sandbox, "GET", "/webhooks/deliveries?gateway=stripe")
    return rows


def complete_challenge(url: str, result: str) -> requests.Response:
    page = requests.get(url, timeout=5)
    assert page.status_code == 200
    assert 'name="result"' in page.text
    return requests.post(url, data={"result": result}, allow_redirects=False, timeout=5)


# --- charges -----------------------------------------------------------------------------------


def test_charge_succeeds_and_sends_what_stripe_needs(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    req = make_request("pm_card_visa", amount=50000, currency="INR", metadata={"user_id": "u_1"}, description="top-up")
    result = gateway.charge(req)

    assert result.status is ChargeStatus.SUCCEEDED
    assert result.gateway_payment_id and result.gateway_payment_id.startswith("pi_")
    assert (result.amount, result.currency, result.reference) == (50000, "INR", req.reference)
    assert result.card is not None
    assert (result.card.brand, result.card.last4, result.card.country) == ("visa", "4242", "US")
    assert result.card.exp_month and result.card.exp_year and result.card.fingerprint
    assert result.redirect_url is None and result.failure_code is None

    pi = sandbox.sandbox.store.get(result.gateway_payment_id)
    assert pi is not None
    assert pi["currency"] == "inr"
    assert pi["payment_method_types"] == ["card"]
    assert pi["metadata"] == {"user_id": "u_1", "payment_id": req.reference}
    assert pi["description"] == "top-up"
    assert pi["_return_url"] == RETURN_URL
    charge = sandbox.sandbox.store.get(pi["latest_charge"])
    assert charge is not None and charge["status"] == "succeeded" and charge["amount_captured"] == 50000

    assert gateway.retrieve_charge(result.gateway_payment_id) == result


@pytest.mark.parametrize(
    ("token", "failure_code", "last4"),
    [
        ("pm_card_chargeDeclined", "card_declined", "0002"),
        ("pm_card_visa_chargeDeclined", "card_declined", "0002"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds", "9995"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "0069"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc", "0127"),
        ("pm_card_chargeDeclinedProcessingError", "processing_error", "0119"),
    ],
)
def test_declines_are_failed_results(gateway: StripeGateway, token: str, failure_code: str, last4: str) -> None:
    req = make_request(token)
    result = gateway.charge(req)

    assert result.status is ChargeStatus.FAILED
    assert result.failure_code == failure_code
    assert result.failure_message
    assert result.card is not None and result.card.last4 == last4
    assert result.gateway_payment_id and result.gateway_payment_id.startswith("pi_")
    assert result.reference == req.reference
    # The intent stays at Stripe, failed, with the decline on it.
    again = gateway.retrieve_charge(result.gateway_payment_id)
    assert again.status is ChargeStatus.FAILED
    assert again.failure_code == failure_code
    assert again.raw_status == "requires_payment_method"


def test_decline_wire_shape_is_stripes(sandbox: SandboxServer) -> None:
    resp = requests.post(
        sandbox.stripe_api_base + "/v1/payment_intents",
        data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_chargeDeclinedInsufficientFunds",
              "confirm": "true"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    assert resp.status_code == 402
    error = resp.json()["error"]
    assert error["type"] == "card_error"
    assert error["code"] == "card_declined"
    assert error["decline_code"] == "insufficient_funds"
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert error["payment_intent"]["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert error["charge"].startswith("ch_")


def test_three_decimal_currency_amounts(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    with pytest.raises(GatewayError) as info:
        gateway.charge(make_request(amount=12345, currency="KWD"))
    assert info.value.code == "amount_not_supported"
    assert stripe_objects(sandbox, "payment_intent") == []  # refused before calling Stripe

    ok = gateway.charge(make_request(amount=12340, currency="KWD"))
    assert ok.status is ChargeStatus.SUCCEEDED and ok.amount == 12340 and ok.currency == "KWD"


def test_zero_decimal_currency(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    result = gateway.charge(make_request(amount=1500, currency="JPY"))
    assert result.status is ChargeStatus.SUCCEEDED and result.amount == 1500
    pi = sandbox.sandbox.store.get(str(result.gateway_payment_id))
    assert pi is not None and pi["amount"] == 1500 and pi["currency"] == "jpy"


# --- 3-D Secure ------------------------------------------------------------------------------


def _start_3ds(
    gateway: StripeGateway, token: str = "pm_card_threeDSecure2Required"
) -> tuple[ChargeRequest, ChargeResult]:
    req = make_request(token, amount=75000)
    result = gateway.charge(req)
    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.redirect_url
    return req, result


def test_3ds_then_success(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    req, result = _start_3ds(gateway)
    assert result.redirect_url == f"{sandbox.url}/stripe/3ds/{result.gateway_payment_id}"
    assert result.card is not None and result.card.last4 == "3220"

    page = requests.get(str(result.redirect_url), timeout=5)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "750.00 INR" in page.text and "3220" in page.text and req.reference in page.text
    assert not contains_card_number(page.text)

    resp = requests.post(str(result.redirect_url), data={"result": "approve"}, allow_redirects=False, timeout=5)
    assert resp.status_code == 303
    location = urlsplit(resp.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == RETURN_URL
    query = parse_qs(location.query)
    assert query["payment_intent"] == [result.gateway_payment_id]
    assert query["redirect_status"] == ["succeeded"]
    assert query["payment_intent_client_secret"][0].startswith(f"{result.gateway_payment_id}_secret_")

    after = gateway.retrieve_charge(str(result.gateway_payment_id))
    assert after.status is ChargeStatus.SUCCEEDED
    assert after.reference == req.reference
    pi = sandbox.sandbox.store.get(str(result.gateway_payment_id))
    assert pi is not None and pi["latest_charge"] and pi["amount_received"] == 75000
    types = [d["type"] for d in deliveries(sandbox)]
    assert "payment_intent.requires_action" in types and types[-1] == "payment_intent.succeeded"

    # The page is one-shot: a second visit says it is done, and a second POST does not charge again.
    assert requests.get(str(result.redirect_url), timeout=5).status_code == 409
    again = requests.post(str(result.redirect_url), data={"result": "fail"}, allow_redirects=False, timeout=5)
    assert "redirect_status=succeeded" in again.headers["Location"]
    assert len(stripe_objects(sandbox, "charge")) == 1


def test_3ds_then_authentication_failure(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    _, result = _start_3ds(gateway, "pm_card_authenticationRequired")
    resp = complete_challenge(str(result.redirect_url), "fail")
    assert resp.status_code == 303
    assert "redirect_status=failed" in resp.headers["Location"]

    after = gateway.retrieve_charge(str(result.gateway_payment_id))
    assert after.status is ChargeStatus.FAILED
    assert after.failure_code == "authentication_failed"
    assert after.card is not None and after.card.last4 == "3184"
    assert deliveries(sandbox)[-1]["type"] == "payment_intent.payment_failed"
    assert stripe_objects(sandbox, "charge") == []


def test_3ds_approved_then_declined(gateway: StripeGateway) -> None:
    _, result = _start_3ds(gateway, "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds")
    resp = complete_challenge(str(result.redirect_url), "approve")
    assert "redirect_status=failed" in resp.headers["Location"]
    after = gateway.retrieve_charge(str(result.gateway_payment_id))
    assert after.status is ChargeStatus.FAILED
    assert after.failure_code == "insufficient_funds"


def test_cancel_pending_3ds_and_cancel_after_success(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    _, pending = _start_3ds(gateway)
    canceled = gateway.cancel_charge(str(pending.gateway_payment_id), idempotency_key="cancel-1")
    assert canceled.status is ChargeStatus.CANCELED
    assert deliveries(sandbox)[-1]["type"] == "payment_intent.canceled"
    # The customer comes back too late: the challenge is gone and nothing is charged.
    assert requests.get(str(pending.redirect_url), timeout=5).status_code == 409
    late = requests.post(str(pending.redirect_url), data={"result": "approve"}, allow_redirects=False, timeout=5)
    assert "redirect_status=failed" in late.headers["Location"]
    assert gateway.retrieve_charge(str(pending.gateway_payment_id)).status is ChargeStatus.CANCELED

    # Late 3-D Secure success: the expiry job's cancel learns the money was taken.
    _, won = _start_3ds(gateway)
    complete_challenge(str(won.redirect_url), "approve")
    result = gateway.cancel_charge(str(won.gateway_payment_id), idempotency_key="cancel-2")
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.gateway_payment_id == won.gateway_payment_id


def test_step_up_asks_for_3ds_on_any_card(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    req = make_request("pm_card_visa", request_three_d_secure=True)
    result = gateway.charge(req)
    assert result.status is ChargeStatus.REQUIRES_ACTION and result.redirect_url
    pi = sandbox.sandbox.store.get(str(result.gateway_payment_id))
    assert pi is not None and pi["payment_method_options"]["card"]["request_three_d_secure"] == "any"
    complete_challenge(result.redirect_url, "approve")
    assert gateway.retrieve_charge(str(result.gateway_payment_id)).status is ChargeStatus.SUCCEEDED

    declined = gateway.charge(make_request("pm_card_chargeDeclined", request_three_d_secure=True))
    assert declined.status is ChargeStatus.REQUIRES_ACTION
    complete_challenge(str(declined.redirect_url), "approve")
    after = gateway.retrieve_charge(str(declined.gateway_payment_id))
    assert (after.status, after.failure_code) == (ChargeStatus.FAILED, "card_declined")

    # Without the flag the same card is charged straight away.
    assert gateway.charge(make_request("pm_card_visa")).status is ChargeStatus.SUCCEEDED


def test_off_session_3ds_card_is_declined(sandbox: SandboxServer) -> None:
    resp = requests.post(
        sandbox.stripe_api_base + "/v1/payment_intents",
        data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_threeDSecure2Required",
              "confirm": "true", "off_session": "true"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    assert resp.status_code == 402
    assert resp.json()["error"]["code"] == "authentication_required"


# --- customers and payment methods -------------------------------------------------------


def test_attach_charge_and_detach_saved_method(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    customer = gateway.create_customer("u_1", idempotency_key="u_1:customer")
    assert customer.startswith("cus_")
    assert gateway.create_customer("u_1", idempotency_key="u_1:customer") == customer  # idempotent

    saved = gateway.attach_payment_method(customer, "pm_card_mastercard", idempotency_key="pm_1:attach")
    assert saved.customer_ref == customer
    assert saved.token_ref.startswith("pm_") and saved.token_ref != "pm_card_mastercard"
    assert (saved.card.brand, saved.card.last4) == ("mastercard", "4444")
    assert saved.card.exp_month and saved.card.exp_year and saved.card.fingerprint

    listed = requests.get(
        f"{sandbox.stripe_api_base}/v1/payment_methods",
        params={"customer": customer, "type": "card"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    ).json()
    assert [m["id"] for m in listed["data"]] == [saved.token_ref]

    result = gateway.charge(make_request(saved.token_ref, customer_ref=customer))
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.card is not None and result.card.last4 == "4444"

    gateway.detach_payment_method(saved)
    gateway.detach_payment_method(saved)  # twice is fine
    pm = sandbox.sandbox.store.get(saved.token_ref)
    assert pm is not None and pm["customer"] is None


def test_attach_from_legacy_token_and_declined_card(gateway: StripeGateway) -> None:
    customer = gateway.create_customer("u_2", idempotency_key="u_2:customer")
    saved = gateway.attach_payment_method(customer, "tok_visa", idempotency_key="pm_2:attach")
    assert saved.card.last4 == "4242"
    with pytest.raises(GatewayError) as info:
        gateway.attach_payment_method(customer, "pm_card_chargeDeclined", idempotency_key="pm_3:attach")
    assert info.value.code == "card_declined"
    with pytest.raises(GatewayError) as missing:
        gateway.attach_payment_method("cus_nope", "pm_card_visa", idempotency_key="pm_4:attach")
    assert missing.value.code == "not_found"


def test_method_of_another_customer_is_refused(gateway: StripeGateway) -> None:
    alice = gateway.create_customer("u_a", idempotency_key="u_a:customer")
    bob = gateway.create_customer("u_b", idempotency_key="u_b:customer")
    saved = gateway.attach_payment_method(alice, "pm_card_visa", idempotency_key="pm_a:attach")
    with pytest.raises(GatewayError):
        gateway.charge(make_request(saved.token_ref, customer_ref=bob))


# --- refunds -----------------------------------------------------------------------------


def test_partial_then_full_refund_then_over_refund(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    charged = gateway.charge(make_request(amount=10000))
    pi_id = str(charged.gateway_payment_id)

    first = gateway.refund(pi_id, 4000, "INR", reference="re_1", idempotency_key="re_1:refund")
    assert first.status is RefundStatus.SUCCEEDED and first.amount == 4000
    assert first.gateway_refund_id.startswith("re_")
    assert gateway.refund(pi_id, 4000, "INR", reference="re_1", idempotency_key="re_1:refund") == first

    with pytest.raises(GatewayError) as over:
        gateway.refund(pi_id, 6001, "INR", reference="re_2", idempotency_key="re_2:refund")
    assert over.value.code == "refund_exceeds_captured"

    rest = gateway.refund(pi_id, 6000, "INR", reference="re_3", idempotency_key="re_3:refund")
    assert rest.amount == 6000
    with pytest.raises(GatewayError) as again:
        gateway.refund(pi_id, 1, "INR", reference="re_4", idempotency_key="re_4:refund")
    assert again.value.code == "refund_exceeds_captured"

    assert gateway.retrieve_refund(first.gateway_refund_id, pi_id) == first
    charge = sandbox.sandbox.store.get(str(sandbox.sandbox.store.get(pi_id)["latest_charge"]))  # type: ignore[index]
    assert charge is not None and charge["amount_refunded"] == 10000 and charge["refunded"] is True
    assert [r["amount"] for r in stripe_objects(sandbox, "refund")] == [4000, 6000]
    types = [d["type"] for d in deliveries(sandbox)]
    assert types.count("charge.refunded") == 2 and types.count("refund.created") == 2


def test_refund_of_failed_charge_is_refused(gateway: StripeGateway) -> None:
    failed = gateway.charge(make_request("pm_card_chargeDeclined"))
    with pytest.raises(GatewayError) as info:
        gateway.refund(str(failed.gateway_payment_id), 100, "INR", reference="re_x", idempotency_key="re_x")
    assert info.value.code != "refund_exceeds_captured"
    assert not isinstance(info.value, GatewayUnavailableError)


# --- idempotency -----------------------------------------------------------------------------


def test_retry_with_same_key_returns_the_same_intent(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    req = make_request()
    first = gateway.charge(req)
    second = gateway.charge(req)
    assert second == first
    assert len(stripe_objects(sandbox, "payment_intent")) == 1
    assert len(stripe_objects(sandbox, "charge")) == 1
    assert [d["type"] for d in deliveries(sandbox)].count("payment_intent.succeeded") == 1

    declined = make_request("pm_card_chargeDeclined")
    assert gateway.charge(declined) == gateway.charge(declined)  # a stored 402 is replayed too
    assert len(stripe_objects(sandbox, "payment_intent")) == 2


def test_replay_is_marked_on_the_wire(sandbox: SandboxServer) -> None:
    url = sandbox.stripe_api_base + "/v1/payment_intents"
    data = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true",
            "metadata[payment_id]": "pay_wire"}
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "wire-1"}
    first = requests.post(url, data=data, headers=headers, timeout=5)
    second = requests.post(url, data=data, headers=headers, timeout=5)
    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    other = requests.post(url, data={**data, "amount": "2000"}, headers=headers, timeout=5)
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    # Another API key is another account: the same key string is free there.
    elsewhere = requests.post(url, data=data, headers={**headers, "Authorization": "Bearer sk_test_other"}, timeout=5)
    assert elsewhere.status_code == 200 and elsewhere.json()["id"] != first.json()["id"]


def test_same_key_other_params_is_an_error(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    req = make_request(amount=1000)
    gateway.charge(req)
    changed = make_request(amount=2000, reference=req.reference, idempotency_key=req.idempotency_key)
    with pytest.raises(GatewayError) as info:
        gateway.charge(changed)
    assert info.value.code == "idempotency_key_reused"
    assert not isinstance(info.value, GatewayUnavailableError)
    assert len(stripe_objects(sandbox, "payment_intent")) == 1


def test_same_key_in_flight_is_a_conflict(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    req = make_request()
    assert sandbox.sandbox.idempotency.begin("stripe:" + API_KEY, req.idempotency_key) is None  # "still running"
    with pytest.raises(GatewayUnavailableError) as info:
        gateway.charge(req)
    assert info.value.http_status == 409
    sandbox.sandbox.idempotency.finish("stripe:" + API_KEY, req.idempotency_key, None)
    assert gateway.charge(req).status is ChargeStatus.SUCCEEDED


def test_concurrent_requests_with_one_key_charge_once(sandbox: SandboxServer) -> None:
    admin(sandbox, "POST", "/faults", json={"mode": "latency", "latency_ms": 200, "path": "payment_intents$",
                                            "remaining": None})
    gateways = [StripeGateway(API_KEY, "whsec", api_base=sandbox.stripe_api_base, timeout=5) for _ in range(4)]
    req = make_request()
    outcomes: list[object] = []

    def run(gw: StripeGateway) -> None:
        try:
            outcomes.append(gw.charge(req))
        except GatewayError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(gw,)) for gw in gateways]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stripe_objects(sandbox, "payment_intent")) == 1
    ids = {o.gateway_payment_id for o in outcomes if isinstance(o, ChargeResult)}
    assert len(ids) == 1
    assert all(isinstance(o, ChargeResult) or isinstance(o, GatewayUnavailableError) for o in outcomes)


# --- faults ----------------------------------------------------------------------------------


def test_find_charge_after_lost_response(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    admin(sandbox, "POST", "/faults", json={"mode": "lost_response", "method": "POST", "path": "/v1/payment_intents$"})
    req = make_request()
    assert gateway.find_charge(req.reference) is None
    with pytest.raises(GatewayUnavailableError) as info:
        gateway.charge(req)
    assert info.value.http_status == 500

    found = gateway.find_charge(req.reference)
    assert found is not None
    assert found.status is ChargeStatus.SUCCEEDED
    assert found.reference == req.reference
    assert found.card is not None and found.card.last4 == "4242"
    # And the retry with the same key gets the original answer, not a second charge.
    retried = gateway.charge(req)
    assert retried.gateway_payment_id == found.gateway_payment_id
    assert len(stripe_objects(sandbox, "payment_intent")) == 1
    assert gateway.find_charge("pay_unknown") is None


def test_injected_503_is_unavailable(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    admin(sandbox, "POST", "/faults", json={"mode": "error", "status": 503, "path": "/stripe/"})
    with pytest.raises(GatewayUnavailableError) as info:
        gateway.charge(make_request())
    assert info.value.http_status == 503
    assert stripe_objects(sandbox, "payment_intent") == []
    assert gateway.charge(make_request()).status is ChargeStatus.SUCCEEDED  # the fault was used up


def test_injected_429_is_retried(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    # One 429, then the same call again after a short wait (a 429 that persists: test_rate_limits.py).
    admin(sandbox, "POST", "/faults", json={"mode": "error", "status": 429, "path": "/stripe/"})
    assert gateway.create_customer("u_9", idempotency_key="u_9:customer").startswith("cus_")


def test_timeout_is_unavailable(sandbox: SandboxServer) -> None:
    gateway = StripeGateway(API_KEY, "whsec", api_base=sandbox.stripe_api_base, timeout=0.5)
    admin(sandbox, "POST", "/faults", json={"mode": "latency", "latency_ms": 1500, "path": "payment_intents"})
    req = make_request()
    started = time.monotonic()
    with pytest.raises(GatewayUnavailableError):
        gateway.charge(req)
    assert time.monotonic() - started < 1.4
    # The sandbox still does the work after the client gave up: the outcome was unknown, not "failed".
    deadline = time.monotonic() + 5
    while not stripe_objects(sandbox, "payment_intent") and time.monotonic() < deadline:
        time.sleep(0.05)
    found = gateway.find_charge(req.reference)
    assert found is not None and found.status is ChargeStatus.SUCCEEDED


def test_connection_refused_is_unavailable() -> None:
    gateway = StripeGateway(API_KEY, "whsec", api_base=f"http://127.0.0.1:{free_port()}/stripe", timeout=1)
    with pytest.raises(GatewayUnavailableError):
        gateway.retrieve_charge("pi_123")


def test_api_key_is_checked(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    resp = requests.post(sandbox.stripe_api_base + "/v1/customers", timeout=5)
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "invalid_request_error"

    monkeypatch.setattr(sandbox.config, "stripe_api_key", API_KEY)
    good = StripeGateway(API_KEY, "whsec", api_base=sandbox.stripe_api_base)
    assert good.create_customer("u_k", idempotency_key="k1").startswith("cus_")
    bad = StripeGateway("sk_test_wrong_key_123456", "whsec", api_base=sandbox.stripe_api_base)
    with pytest.raises(GatewayError) as info:
        bad.create_customer("u_k", idempotency_key="k2")
    assert info.value.code == "gateway_auth_failed" and info.value.http_status == 401


def test_unknown_objects_and_payouts(gateway: StripeGateway) -> None:
    with pytest.raises(GatewayError) as info:
        gateway.retrieve_charge("pi_doesnotexist")
    assert info.value.code == "not_found" and info.value.http_status == 404
    beneficiary = Beneficiary(name="A Kumar", vpa="a@upi")
    with pytest.raises(GatewayError, match="payouts not supported"):
        gateway.create_payout(PayoutRequest("wd_1", 100, "INR", "UPI", beneficiary, idempotency_key="wd_1"))
    with pytest.raises(GatewayError, match="payouts not supported"):
        gateway.retrieve_payout("po_1")


def test_no_card_number_anywhere(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    customer = gateway.create_customer("u_c", idempotency_key="u_c")
    gateway.attach_payment_method(customer, "pm_card_amex", idempotency_key="u_c:pm")
    for token in ("pm_card_visa", "pm_card_chargeDeclined", "pm_card_threeDSecure2Required", "pm_card_in"):
        gateway.charge(make_request(token))
    dumped = json.dumps(sandbox.sandbox.store.objects)
    assert not contains_card_number(dumped)
    assert all(not contains_card_number(json.loads(d.body).__repr__()) for d in sandbox.sandbox.webhooks.log)


# --- webhooks: verification ------------------------------------------------------------------


def _event_body(payment_id: str = "pay_hook") -> bytes:
    return json.dumps(
        {"id": "evt_test_1", "object": "event", "type": "payment_intent.succeeded",
         "data": {"object": {"id": "pi_1", "object": "payment_intent", "metadata": {"payment_id": payment_id}}}}
    ).encode()


def test_verify_webhook_good_signature(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    body = _event_body()
    event = gateway.verify_webhook(body, {"stripe-signature": sign_payload(body, sandbox.config.stripe_webhook_secret)})
    assert (event.gateway, event.event_id, event.type) == ("stripe", "evt_test_1", "payment_intent.succeeded")
    assert (event.object_id, event.reference) == ("pi_1", "pay_hook")
    assert event.payload["data"]["object"]["id"] == "pi_1"


def test_verify_webhook_rejects_bad_input(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    secret = sandbox.config.stripe_webhook_secret
    body = _event_body()
    cases: list[tuple[bytes, dict[str, str]]] = [
        (body, {}),
        (body, {"Stripe-Signature": sign_payload(body, "whsec_wrong")}),
        (body, {"Stripe-Signature": sign_payload(body, secret, timestamp=int(time.time()) - 301)}),
        (body + b" ", {"Stripe-Signature": sign_payload(body, secret)}),
        (b"not json", {"Stripe-Signature": sign_payload(b"not json", secret)}),
        (b'{"id": "evt_1"}', {"Stripe-Signature": sign_payload(b'{"id": "evt_1"}', secret)}),
        (b"\xff\xfe", {"Stripe-Signature": sign_payload(b"\xff\xfe", secret)}),
        (body, {"Stripe-Signature": "garbage"}),
    ]
    for raw, headers in cases:
        with pytest.raises(InvalidWebhook):
            gateway.verify_webhook(raw, headers)
    # Just inside the tolerance is fine.
    fresh = sign_payload(body, secret, timestamp=int(time.time()) - 290)
    assert gateway.verify_webhook(body, {"Stripe-Signature": fresh}).event_id == "evt_test_1"


# --- webhooks: delivery ----------------------------------------------------------------------


@pytest.fixture
def receiver(sandbox: SandboxServer) -> Iterator[Receiver]:
    r = Receiver()
    admin(sandbox, "POST", "/webhooks", json={"stripe_webhook_url": r.url})
    try:
        yield r
    finally:
        admin(sandbox, "POST", "/webhooks", json={"stripe_webhook_url": None})
        r.close()


def test_webhooks_are_delivered_signed(gateway: StripeGateway, sandbox: SandboxServer, receiver: Receiver) -> None:
    req = make_request()
    result = gateway.charge(req)
    receiver.wait_for(3)
    assert sandbox.sandbox.webhooks.wait_idle(5)
    types = [e["type"] for e in receiver.events()]
    assert types == ["payment_intent.created", "charge.succeeded", "payment_intent.succeeded"]
    for headers, body in receiver.received:
        event = gateway.verify_webhook(body, headers)
        assert event.reference == req.reference
    succeeded = gateway.verify_webhook(receiver.received[-1][1], receiver.received[-1][0])
    assert succeeded.object_id == result.gateway_payment_id
    assert succeeded.payload["data"]["object"]["status"] == "succeeded"
    assert all(d["delivered"] and d["attempts"] == 1 for d in deliveries(sandbox))

    # Refund events carry our refund id.
    gateway.refund(str(result.gateway_payment_id), 100, "INR", reference="re_hook", idempotency_key="re_hook")
    receiver.wait_for(5)
    by_type = {e["type"]: e for e in receiver.events()}
    assert by_type["refund.created"]["data"]["object"]["metadata"] == {"refund_id": "re_hook"}
    assert by_type["charge.refunded"]["data"]["object"]["amount_refunded"] == 100
    refund_event = gateway.verify_webhook(receiver.received[-2][1], receiver.received[-2][0])
    assert refund_event.reference == "re_hook"


def test_webhook_retried_after_500(gateway: StripeGateway, sandbox: SandboxServer, receiver: Receiver) -> None:
    receiver.failures = 2
    req = make_request()
    gateway.charge(req)
    receiver.wait_for(9)  # three events, each delivered on its third attempt
    assert sandbox.sandbox.webhooks.wait_idle(10)
    log = deliveries(sandbox)
    assert len(log) == 3
    assert all(d["delivered"] and d["attempts"] == 3 and d["status"] == 200 for d in log)
    ids = [e["id"] for e in receiver.events()]
    assert len(set(ids)) == 3 and all(ids.count(i) == 3 for i in ids)
    # Every attempt carries a valid signature over the same body.
    for headers, body in receiver.received:
        assert gateway.verify_webhook(body, headers).reference == req.reference


def test_webhook_knobs_duplicate_reorder_drop(
    gateway: StripeGateway, sandbox: SandboxServer, receiver: Receiver
) -> None:
    admin(sandbox, "POST", "/webhooks", json={"duplicate": 1})
    gateway.charge(make_request())
    receiver.wait_for(6)
    assert sandbox.sandbox.webhooks.wait_idle(5)
    ids = [e["id"] for e in receiver.events()]
    assert len(ids) == 6 and all(ids.count(i) == 2 for i in ids)

    sandbox.sandbox.reset()
    admin(sandbox, "POST", "/webhooks", json={"stripe_webhook_url": receiver.url, "reorder": True, "reorder_batch": 3})
    receiver.received.clear()
    gateway.charge(make_request())
    receiver.wait_for(3)
    assert [e["type"] for e in receiver.events()] == [
        "payment_intent.succeeded", "charge.succeeded", "payment_intent.created"
    ]

    sandbox.sandbox.reset()
    admin(sandbox, "POST", "/webhooks", json={"stripe_webhook_url": receiver.url, "drop": 1})
    receiver.received.clear()
    gateway.charge(make_request())
    receiver.wait_for(2)
    assert sandbox.sandbox.webhooks.wait_idle(5)
    time.sleep(0.2)
    assert [e["type"] for e in receiver.events()] == ["charge.succeeded", "payment_intent.succeeded"]
    log = deliveries(sandbox)
    assert log[0]["type"] == "payment_intent.created" and log[0]["dropped"] is True


# --- search ----------------------------------------------------------------------------------


def test_search_query_language_subset(gateway: StripeGateway, sandbox: SandboxServer) -> None:
    ok = gateway.charge(make_request(amount=1111))
    failed = gateway.charge(make_request("pm_card_chargeDeclined", amount=2222))

    def search(query: str) -> requests.Response:
        return requests.get(
            sandbox.stripe_api_base + "/v1/payment_intents/search",
            params={"query": query},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        )

    assert [p["id"] for p in search("status:'succeeded'").json()["data"]] == [ok.gateway_payment_id]
    both = search(f"metadata['payment_id']:'{ok.reference}' OR metadata['payment_id']:'{failed.reference}'")
    assert {p["id"] for p in both.json()["data"]} == {ok.gateway_payment_id, failed.gateway_payment_id}
    assert [p["id"] for p in search("amount>2000 AND currency:'inr'").json()["data"]] == [failed.gateway_payment_id]
    assert [p["id"] for p in search("-status:'succeeded'").json()["data"]] == [failed.gateway_payment_id]
    assert search("nonsense").status_code == 400
