"""`payment-service serve` and `payment-service dev` come up and answer as the contract says."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import jwt
import requests

from config.settings import DEV_JWT_SECRET
from gateway_sandbox.server import free_port
from tests.support.processes import VENV_BIN, ServiceProcess


def _assert_problem(resp: requests.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/problem+json"
    body = resp.json()
    assert body["code"] == code and body["status"] == status
    assert "Traceback" not in resp.text


def test_serve_is_ready_with_database_and_migrations(api_url: str) -> None:
    resp = requests.get(api_url + "/readyz", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["checks"] == {"database": "ok"}
    assert resp.headers["X-Request-Id"]


def test_serve_answers_problems(api_url: str) -> None:
    _assert_problem(requests.get(api_url + "/no/such/route", timeout=10), 404, "not_found")
    _assert_problem(requests.put(api_url + "/healthz", timeout=10), 405, "method_not_allowed")


def test_serve_metrics_and_openapi(api_url: str) -> None:
    requests.get(api_url + "/readyz", timeout=10)  # uses the database pool
    metrics = requests.get(api_url + "/metrics", timeout=10).text
    assert "http_requests_total" in metrics
    # The pool, added up over gunicorn's workers (serve's multiprocess directory).
    # (The size is summed over the workers that have built their engine so far: 20 per worker.)
    for name in ("db_pool_max_connections ", "db_pool_checked_out ", "db_pool_waiters ",
                 "db_pool_checkout_seconds_count "):
        assert f"\n{name}" in metrics, name
    size = float(metrics.split("\ndb_pool_max_connections ")[1].split("\n")[0])
    assert size > 0 and size % 20 == 0, size
    doc = requests.get(api_url + "/openapi.json", timeout=10).json()
    assert "/readyz" in doc["paths"]
    unavailable = doc["paths"]["/payments/topup"]["post"]["responses"]["503"]
    assert "Retry-After" in unavailable["headers"] and "gateway_unavailable" in unavailable["description"]
    assert requests.get(api_url + "/docs", timeout=10).status_code == 200


def test_readyz_stays_ready_when_the_broker_is_down(api_env: dict[str, str], tmp_path: Path) -> None:
    """The API never talks to Kafka (the outbox decouples them): a broker outage must not take every
    replica out of the load balancer. Top-ups keep answering meanwhile; the relay reports the broker."""
    port = free_port()
    env = {**api_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}  # nothing listens there
    proc = ServiceProcess(
        [str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env, tmp_path, tmp_path / "serve.log",
    )
    try:
        resp = proc.wait_http(f"http://127.0.0.1:{port}/readyz", status=200)
        assert resp.json()["checks"] == {"database": "ok"}
        token = jwt.encode({"sub": "u_no_broker", "aud": "payment-service", "exp": int(time.time()) + 600},
                           DEV_JWT_SECRET, algorithm="HS256")
        topup = requests.post(
            f"http://127.0.0.1:{port}/payments/topup", timeout=30,
            json={"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex},
        )
        assert topup.status_code == 201, topup.text
    finally:
        proc.stop()


def test_dev_brings_everything_up(tmp_path: Path) -> None:
    api_port, sandbox_port, broker_port = free_port(), free_port(), free_port()
    proc = ServiceProcess(
        [str(VENV_BIN / "payment-service"), "dev", "--port", str(api_port), "--sandbox-port", str(sandbox_port),
         "--broker-port", str(broker_port)],
        {}, tmp_path, tmp_path / "dev.log",
    )
    try:
        resp = proc.wait_http(f"http://127.0.0.1:{api_port}/readyz", timeout=90)
        assert resp.json()["checks"] == {"database": "ok"}
        assert (tmp_path / "instance" / "payment-service.sqlite3").exists()
        assert requests.get(f"http://127.0.0.1:{sandbox_port}/", timeout=5).status_code == 200
        out = proc.output()
        assert f"127.0.0.1:{broker_port}" in out and "demo user token" in out
    finally:
        assert proc.stop() == 0
    assert "stopped" in proc.output()


def test_docs_page_renders_every_operation_in_a_browser(api_url: str, browser) -> None:
    doc = requests.get(api_url + "/openapi.json", timeout=10).json()
    operations = sum(len(ops) for ops in doc["paths"].values())
    page = browser.new_page()
    try:
        page.goto(api_url + "/docs")
        page.wait_for_selector(".opblock", timeout=20000)
        assert page.locator(".opblock").count() == operations
        assert "Unable to render" not in page.content()
    finally:
        page.close()
