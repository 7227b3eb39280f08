"""CPU slots end to end (payment_service/cpu_slots.py): `payment-service serve`, one gevent worker with a
single slot, MariaDB, the sandbox holding every charge 1.5 s. A request waiting on its gateway holds no
slot: twenty top-ups wait together, not one after the other, and the API keeps answering meanwhile."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gateway_sandbox.server import SandboxServer

from .conftest import start_api, user_headers
from .test_gateway_down import metric

LATENCY_S = 1.5


@pytest.fixture(scope="module")
def api_one_slot(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_api({**api_env, "API_CPU_SLOTS": "1"}, tmp_path_factory.mktemp("cpu-slots"), workers=1)
    try:
        yield url
    finally:
        proc.stop()


def topup(url: str, user: str) -> tuple[int, float]:
    body = {"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    started = time.perf_counter()
    resp = requests.post(f"{url}/payments/topup", json=body, headers=user_headers(user, uuid.uuid4().hex), timeout=60)
    return resp.status_code, time.perf_counter() - started


def test_requests_waiting_on_the_gateway_hold_no_slot(api_one_slot: str, e2e_sandbox: SandboxServer) -> None:
    url = api_one_slot
    assert topup(url, "u_slots_warm")[0] == 201
    rule = {"mode": "latency", "method": "POST", "path": r"/v1/payment_intents$", "latency_ms": int(LATENCY_S * 1000),
            "remaining": None}
    assert requests.post(e2e_sandbox.url + "/_sandbox/faults", json=rule, timeout=10).status_code == 201
    try:
        with ThreadPoolExecutor(20) as pool:
            started = time.perf_counter()
            futures = [pool.submit(topup, url, f"u_slots_{i}") for i in range(20)]
            time.sleep(LATENCY_S / 3)  # the twenty are with the gateway now
            health_started = time.perf_counter()
            health = requests.get(f"{url}/healthz", timeout=10)
            health_took = time.perf_counter() - health_started
            results = [f.result() for f in futures]
            wall = time.perf_counter() - started
    finally:
        requests.delete(e2e_sandbox.url + "/_sandbox/faults", timeout=10)
    assert [status for status, _ in results] == [201] * 20
    # One slot held across the gateway call would be 20 x 1.5 s = 30 s; without, about one call's time.
    assert wall < 3 * LATENCY_S, (wall, sorted(took for _, took in results))
    assert health.status_code == 200 and health_took < LATENCY_S / 2, health_took
    # Each top-up took the slot back after its gateway call, waiting its turn when another held it.
    assert metric(url, "api_cpu_slot_wait_seconds_count", phase="resumed") + \
        metric(url, "api_cpu_slot_wait_seconds_count", phase="new") >= 1
