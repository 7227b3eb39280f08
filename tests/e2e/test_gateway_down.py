"""A gateway hard down, end to end: `payment-service serve`, MariaDB, the sandbox with Stripe hanging.

Once the Stripe breaker is open, top-ups to Stripe answer 503 `gateway_unavailable` with Retry-After
at once, record nothing and charge nothing; Razorpay top-ups go on as usual; when Stripe comes back,
top-ups to it succeed again by themselves (a half-open probe closes the breaker).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from gateway_sandbox.server import SandboxServer
from payment_service.adapters.orm import PaymentRow

from .conftest import start_api, user_headers

OPEN_SECONDS = 2


@pytest.fixture(scope="module")
def api(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    env = {
        **api_env,
        "GATEWAY_TIMEOUT_SECONDS": "1",
        "GATEWAY_BREAKER_MIN_CALLS": "4",
        "GATEWAY_BREAKER_WINDOW": "10",
        "GATEWAY_BREAKER_OPEN_SECONDS": str(OPEN_SECONDS),
    }
    log_dir = tmp_path_factory.mktemp("gateway-down")
    # One worker: one breaker per gateway (each worker process keeps its own).
    proc, url = start_api(env, log_dir, workers=1)
    try:
        yield url, proc.log_path
    finally:
        proc.stop()


def topup(url: str, user: str, gateway: str = "stripe") -> tuple[requests.Response, float]:
    token = "pm_card_visa" if gateway == "stripe" else "tok_rzp_success"
    body = {"amount": 1000, "currency": "INR", "gateway": gateway, "token": token}
    started = time.perf_counter()
    resp = requests.post(f"{url}/payments/topup", json=body, headers=user_headers(user, uuid.uuid4().hex), timeout=30)
    return resp, time.perf_counter() - started


def payments_of(engine, user: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(PaymentRow.user_id == user)).scalar_one())


def metric(url: str, name: str, **labels: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{([^}]*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
    return 0.0


def test_stripe_down_fails_fast_razorpay_unaffected_and_recovery_by_itself(
    api: tuple[str, Path], engine, e2e_sandbox: SandboxServer
) -> None:
    url, log_path = api
    assert topup(url, "u_down_warm")[0].status_code == 201
    # Stripe hangs: every call is held 3 s, past our 1 s timeout, and then nothing is done.
    fault = {"mode": "timeout", "latency_ms": 3000, "path": "^/stripe/", "remaining": None}
    assert requests.post(e2e_sandbox.url + "/_sandbox/faults", json=fault, timeout=10).status_code == 201
    try:
        # The first top-ups wait for the timeout: the outcome is unknown, the payment stays PENDING (lifecycle).
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(lambda i: topup(url, f"u_down_first_{i}"), range(4)))
        for resp, took in first:
            assert resp.status_code == 503 and resp.json()["code"] == "gateway_unavailable", resp.text
            assert took >= 0.9 and int(resp.headers["Retry-After"]) >= 1
        assert metric(url, "payment_gateway_circuit_state", gateway="stripe") == 2  # open

        # Open: at once, nothing recorded, nothing sent to the gateway.
        user = "u_down_fast"
        times = []
        for _ in range(20):
            resp, took = topup(url, user)
            times.append(took)
            assert resp.status_code == 503, resp.text
            assert resp.headers["Content-Type"] == "application/problem+json"
            assert resp.json()["code"] == "gateway_unavailable" and "no payment was made" in resp.json()["detail"]
            assert 1 <= int(resp.headers["Retry-After"]) <= OPEN_SECONDS
        assert max(times) < 0.05, times
        assert payments_of(engine, user) == 0

        # The other gateway is unaffected.
        resp, took = topup(url, "u_down_rzp", "razorpay")
        assert resp.status_code == 201 and resp.json()["status"] == "CAPTURED", resp.text
        assert metric(url, "payment_gateway_circuit_state", gateway="razorpay") == 0
    finally:
        requests.delete(e2e_sandbox.url + "/_sandbox/faults", timeout=10)

    # Stripe is back: after Retry-After, a top-up goes through as the probe and closes the breaker.
    deadline = time.monotonic() + OPEN_SECONDS + 10
    while True:
        resp, _ = topup(url, "u_down_back")
        if resp.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(min(int(resp.headers.get("Retry-After", "1")), 1))
    assert resp.status_code == 201, resp.text
    assert metric(url, "payment_gateway_circuit_state", gateway="stripe") == 0
    for before, after in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        assert metric(url, "payment_gateway_circuit_transitions_total", gateway="stripe", from_state=before,
                      to_state=after) == 1
    log = log_path.read_text()
    assert re.search(r'"message": "gateway circuit open".*"gateway": "stripe"', log)
    assert re.search(r'"message": "gateway circuit closed".*"gateway": "stripe"', log)
