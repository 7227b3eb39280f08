"""A request gives its CPU slot back only while a gateway call is on the wire (payment_service/cpu_slots.py).

The transports do it (Stripe's urllib3 client, the `requests` session of the Razorpay SDK) and so does a
429's back-off, so the SDK's own work on either side of the exchange runs in the slot, and another request
of the worker can run while this one waits. Real threads: the slots gate threads as they gate greenlets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from stripe._api_requestor import _APIRequestor

from gateway_sandbox.server import SandboxServer
from payment_service import cpu_slots
from payment_service.cpu_slots import CpuSlots
from payment_service.domain.breaker import BreakerPolicy, CircuitBreaker
from payment_service.gateways import resilience
from payment_service.gateways.base import ChargeRequest, ChargeStatus, GatewayUnavailableError, idempotency_key_for
from payment_service.gateways.stripe_gateway import StripeGateway

WIRE_S = 0.4  # how long the far end takes to answer


@pytest.fixture
def one_slot(monkeypatch: pytest.MonkeyPatch) -> CpuSlots:
    slots = CpuSlots(1)
    monkeypatch.setattr(cpu_slots, "_SLOTS", slots)
    return slots


@pytest.fixture
def slow_server() -> Iterator[str]:
    """Answers every request after WIRE_S with a small JSON body."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            time.sleep(WIRE_S)
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def while_holding(slots: CpuSlots, call: Any) -> tuple[Any, float, float]:
    """Run `call` holding the only slot, while another thread asks for it: (result, when the other got the
    slot, when the call returned), in seconds from the start. A call that frees the slot on the wire lets
    the other in before it returns."""
    started = time.perf_counter()
    got_at: list[float] = []
    in_call = threading.Event()

    def other() -> None:
        in_call.wait(5)
        with slots.hold():
            got_at.append(time.perf_counter() - started)

    thread = threading.Thread(target=other)
    thread.start()
    with slots.hold():
        in_call.set()
        result = call()
        returned_at = time.perf_counter() - started
        assert slots.held  # taken back before the request's own work goes on
    thread.join(10)
    assert got_at, "the other request never got the slot"
    return result, got_at[0], returned_at


def test_stripe_calls_free_the_slot_on_the_wire_and_parse_the_answer_in_it(
    sandbox: SandboxServer, one_slot: CpuSlots, monkeypatch: pytest.MonkeyPatch
) -> None:
    resp = requests.post(sandbox.url + "/_sandbox/faults", json={
        "mode": "latency", "latency_ms": int(WIRE_S * 1000), "path": "payment_intents$"}, timeout=5)
    assert resp.status_code < 300, resp.text
    held_while_parsing: list[bool] = []
    interpret = _APIRequestor._interpret_response

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        held_while_parsing.append(one_slot.held)
        return interpret(self, *args, **kwargs)

    monkeypatch.setattr(_APIRequestor, "_interpret_response", recording)
    gateway = resilience.GuardedGateway(
        StripeGateway("sk_test_slots", "whsec", api_base=sandbox.stripe_api_base, timeout=5),
        CircuitBreaker("stripe", BreakerPolicy(), time.monotonic),
    )
    reference = f"pay_sl{time.time_ns()}"
    request = ChargeRequest(reference, 50000, "INR", idempotency_key_for(reference, "charge"), "pm_card_visa")

    result, other_got_it, returned = while_holding(one_slot, lambda: gateway.charge(request))
    assert result.status is ChargeStatus.SUCCEEDED
    assert other_got_it < returned - WIRE_S / 2  # while the charge was on the wire
    assert held_while_parsing and all(held_while_parsing)  # the SDK read the answer in the slot


def test_the_razorpay_session_frees_the_slot_on_the_wire(slow_server: str, one_slot: CpuSlots) -> None:
    session = resilience.http_session(8)
    response, other_got_it, returned = while_holding(one_slot, lambda: session.get(slow_server, timeout=5))
    assert response.json() == {"ok": True}
    assert other_got_it < returned - WIRE_S / 2


def test_a_429_back_off_frees_the_slot(one_slot: CpuSlots) -> None:
    answers = iter([GatewayUnavailableError("slow down", http_status=429), "pi_1"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    result, other_got_it, returned = while_holding(
        one_slot, lambda: resilience.retry_rate_limited("stripe", call, waits=(WIRE_S,))
    )
    assert result == "pi_1"
    assert other_got_it < returned - WIRE_S / 4  # during the back-off (jittered to at least WIRE_S / 2)
