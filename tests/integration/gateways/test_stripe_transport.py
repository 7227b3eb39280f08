"""The Stripe SDK's transport (payment_service/gateways/stripe_http.py, urllib3 without `requests`): what the
service relied on from the `requests` transport still holds, through the SDK against the sandbox. Timeouts,
refused connections, 5xx and 429 are covered by test_stripe_gateway.py and test_rate_limits.py, over the same
transport."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway_sandbox.server import SandboxServer
from payment_service.gateways.base import ChargeRequest, ChargeStatus, idempotency_key_for
from payment_service.gateways.stripe_gateway import StripeGateway
from tests.integration.adapters.records import race


class ForwardProxy:
    """A plain HTTP forward proxy (absolute-URI requests), which records what passed through it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                proxy.seen.append(f"{self.command} {self.path}")
                target = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "host")}
                upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body,
                                 headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forward_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                 "ALL_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    proxy = ForwardProxy()
    yield proxy
    proxy.close()


def charge(gateway: StripeGateway) -> ChargeStatus:
    reference = f"pay_tr{time.time_ns()}"
    request = ChargeRequest(reference, 50000, "INR", idempotency_key_for(reference, "charge"), "pm_card_visa")
    return gateway.charge(request).status


def test_the_environments_proxy_carries_the_calls(
    sandbox: SandboxServer, forward_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", forward_proxy.url)
    gateway = StripeGateway("sk_test_proxy", "whsec", api_base=sandbox.stripe_api_base, timeout=5)
    assert charge(gateway) is ChargeStatus.SUCCEEDED
    assert [line for line in forward_proxy.seen if "/v1/payment_intents" in line] == [
        f"POST {sandbox.stripe_api_base}/v1/payment_intents"
    ]


def test_no_proxy_sends_the_calls_direct(
    sandbox: SandboxServer, forward_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", forward_proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    gateway = StripeGateway("sk_test_proxy", "whsec", api_base=sandbox.stripe_api_base, timeout=5)
    assert charge(gateway) is ChargeStatus.SUCCEEDED
    assert forward_proxy.seen == []


def test_calls_from_many_threads_share_a_few_kept_alive_connections(sandbox: SandboxServer) -> None:
    """One pool for the process (the SDK's default client is a session per thread, under gevent per request):
    forty charges from eight threads open at most eight connections, the most in flight at once."""
    gateway = StripeGateway("sk_test_pool", "whsec", api_base=sandbox.stripe_api_base, timeout=5)
    outcomes = race(lambda _: [charge(gateway) for _ in range(5)], 8)
    assert outcomes == [[ChargeStatus.SUCCEEDED] * 5] * 8
    assert 1 <= gateway.http_client.connections_opened() <= 8
