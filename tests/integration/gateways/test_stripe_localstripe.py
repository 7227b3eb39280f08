"""The Stripe adapter against localstripe, a third-party Stripe emulator: a second opinion on our wire usage.

localstripe (https://github.com/adrienverge/localstripe) is stricter than our sandbox about
parameters it does not know and looser about others; it has no search endpoint, no idempotency and
no redirect-based 3-D Secure, so only the calls it supports are run here. Skipped, with the
reason, when localstripe cannot be started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway_sandbox.server import free_port
from payment_service.gateways.base import ChargeRequest, ChargeStatus, GatewayError, RefundStatus
from payment_service.gateways.stripe_gateway import StripeGateway


def _localstripe_command() -> list[str] | None:
    beside = Path(sys.executable).with_name("localstripe")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("localstripe")
    return [found] if found else None


@pytest.fixture(scope="module")
def localstripe_url() -> Iterator[str]:
    command = _localstripe_command()
    if command is None:
        pytest.skip("localstripe is not installed (pip install localstripe)")
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        # --from-scratch: localstripe keeps its state in a fixed /tmp/localstripe.pickle and loads it at
        # start; a run killed while writing it (or another suite's localstripe) left one it cannot read.
        [*command, "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
                pytest.skip(f"localstripe exited with {proc.returncode}: {err}")
            try:
                requests.get(url + "/v1/customers", headers={"Authorization": "Bearer sk_test_x"}, timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.skip("localstripe did not start listening within 15 s")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def gateway(localstripe_url: str) -> StripeGateway:
    return StripeGateway("sk_test_localstripe", "whsec_unused", api_base=localstripe_url, timeout=5)


def _request(token: str, reference: str, amount: int = 5000, customer_ref: str | None = None) -> ChargeRequest:
    # No return_url or description: localstripe refuses parameters it does not model.
    return ChargeRequest(
        reference=reference,
        amount=amount,
        currency="INR",
        idempotency_key=f"{reference}:charge",
        token=token,
        customer_ref=customer_ref,
    )


def test_customer_saved_method_and_charge(gateway: StripeGateway) -> None:
    customer = gateway.create_customer("u_ls1", idempotency_key="u_ls1:customer")
    assert customer.startswith("cus_")
    saved = gateway.attach_payment_method(customer, "pm_card_visa", idempotency_key="pm_ls1:attach")
    assert saved.token_ref.startswith("pm_") and saved.customer_ref == customer
    assert (saved.card.brand, saved.card.last4) == ("visa", "4242")

    result = gateway.charge(_request(saved.token_ref, "pay_ls1", customer_ref=customer))
    assert result.status is ChargeStatus.SUCCEEDED
    assert result.amount == 5000 and result.currency == "INR"
    assert result.reference == "pay_ls1"
    assert result.card is not None and result.card.last4 == "4242"

    again = gateway.retrieve_charge(str(result.gateway_payment_id))
    assert again.status is ChargeStatus.SUCCEEDED
    assert again.gateway_payment_id == result.gateway_payment_id

    gateway.detach_payment_method(saved)


def test_charge_with_test_token_and_refund(gateway: StripeGateway) -> None:
    result = gateway.charge(_request("pm_card_visa", "pay_ls2", amount=10000))
    assert result.status is ChargeStatus.SUCCEEDED
    pi_id = str(result.gateway_payment_id)

    refund = gateway.refund(pi_id, 2500, "INR", reference="re_ls2", idempotency_key="re_ls2:refund")
    assert refund.status is RefundStatus.SUCCEEDED and refund.amount == 2500
    assert gateway.retrieve_refund(refund.gateway_refund_id, pi_id) == refund


def test_decline(gateway: StripeGateway) -> None:
    # localstripe declines this card when charged (Stripe's "chargeCustomerFail" card).
    result = gateway.charge(_request("pm_card_chargeCustomerFail", "pay_ls3"))
    assert result.status is ChargeStatus.FAILED
    assert result.failure_code == "card_declined"
    assert result.failure_message


def test_attach_declined_card(gateway: StripeGateway) -> None:
    customer = gateway.create_customer("u_ls4", idempotency_key="u_ls4:customer")
    with pytest.raises(GatewayError) as info:
        gateway.attach_payment_method(customer, "pm_card_visa_chargeDeclined", idempotency_key="pm_ls4:attach")
    assert info.value.code == "card_declined"


def test_unknown_intent_is_not_found(gateway: StripeGateway) -> None:
    with pytest.raises(GatewayError) as info:
        gateway.retrieve_charge("pi_doesnotexist")
    assert info.value.http_status == 404
