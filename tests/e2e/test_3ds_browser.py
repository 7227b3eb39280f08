"""3-D Secure in a real browser: Chromium opens the sandbox's Stripe challenge page, the customer clicks.

The charge is created through the Stripe adapter (SDK -> sandbox), the browser follows
`next_action.redirect_to_url`, clicks a button, and must land on our return_url with Stripe's
query parameters, the intent having moved at the "gateway".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway_sandbox import SandboxConfig
from gateway_sandbox.server import SandboxServer
from payment_service.gateways.base import ChargeRequest, ChargeStatus
from payment_service.gateways.stripe_gateway import StripeGateway

pytestmark = pytest.mark.e2e

SCREENSHOT_DIR = Path(os.environ.get("SCREENSHOT_DIR", "/tmp"))


class ReturnPage:
    """Serves the wallet's "after 3-D Secure" page and remembers the query strings it was opened with."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                page.hits.append(self.path)
                body = b"<!doctype html><title>Wallet</title><h1 id='done'>Back in the wallet</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/after-3ds"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig()) as server:
        yield server


@pytest.fixture
def return_page() -> Iterator[ReturnPage]:
    page = ReturnPage()
    yield page
    page.close()


def _charge(sandbox: SandboxServer, return_url: str, token: str, reference: str) -> tuple[StripeGateway, str, str]:
    gateway = StripeGateway("sk_test_e2e", sandbox.config.stripe_webhook_secret, api_base=sandbox.stripe_api_base)
    result = gateway.charge(
        ChargeRequest(
            reference=reference,
            amount=149900,
            currency="INR",
            idempotency_key=f"{reference}:charge",
            token=token,
            return_url=return_url,
        )
    )
    assert result.status is ChargeStatus.REQUIRES_ACTION
    assert result.redirect_url and result.gateway_payment_id
    return gateway, result.gateway_payment_id, result.redirect_url


@pytest.mark.parametrize(
    ("button", "token", "redirect_status", "final"),
    [
        ("#approve", "pm_card_threeDSecure2Required", "succeeded", ChargeStatus.SUCCEEDED),
        ("#fail", "pm_card_threeDSecure2Required", "failed", ChargeStatus.FAILED),
    ],
)
def test_challenge_in_browser(
    sandbox: SandboxServer,
    return_page: ReturnPage,
    browser: Any,
    button: str,
    token: str,
    redirect_status: str,
    final: ChargeStatus,
) -> None:
    reference = f"pay_e2e_{redirect_status}"
    gateway, pi_id, challenge_url = _charge(sandbox, return_page.url, token, reference)

    page = browser.new_page()
    try:
        page.goto(challenge_url)
        assert page.title() == "3-D Secure test authentication"
        assert page.locator("#amount").inner_text() == "1499.00 INR"
        assert page.locator("#last4").inner_text() == "3220"
        assert reference in page.content()
        page.screenshot(path=str(SCREENSHOT_DIR / f"stripe-3ds-challenge-{redirect_status}.png"), full_page=True)

        with page.expect_navigation(url=lambda u: u.startswith(return_page.url)):
            page.click(button)
        landed = urlsplit(page.url)
        assert f"{landed.scheme}://{landed.netloc}{landed.path}" == return_page.url
        query = parse_qs(landed.query)
        assert query["payment_intent"] == [pi_id]
        assert query["redirect_status"] == [redirect_status]
        assert page.locator("#done").inner_text() == "Back in the wallet"
        page.screenshot(path=str(SCREENSHOT_DIR / f"stripe-3ds-returned-{redirect_status}.png"))
    finally:
        page.close()

    assert [h for h in return_page.hits if h.startswith("/after-3ds")] == [landed.path + "?" + landed.query]
    after = gateway.retrieve_charge(pi_id)
    assert after.status is final
    if final is ChargeStatus.FAILED:
        assert after.failure_code == "authentication_failed"
