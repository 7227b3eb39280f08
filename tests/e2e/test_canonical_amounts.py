"""Canonical amounts end to end: a running API (gunicorn, gevent) on MariaDB and the gateway sandbox.

Top-ups, refunds and withdrawals answer with `canonical_amount`, `canonical_currency` and
`amount_display`, exactly as the service's own /openapi.json describes, and their outbox events carry
the canonical amount. A second API whose rate feed hangs still answers every top-up at once, with
nulls: nothing waits for a rate.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import OutboxEventRow
from tests.support.openapi_responses import check_response

from .conftest import start_api, user_headers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The shipped sample rates (config/fx/), whatever their age.
    proc, url = start_api({**api_env, "FX_MAX_AGE_SECONDS": "0"}, tmp_path_factory.mktemp("fx"), workers=1)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def spec(api: str) -> dict[str, Any]:
    return requests.get(f"{api}/openapi.json", timeout=10).json()


@pytest.fixture(scope="module")
def service(engine: Any) -> dict[str, str]:
    with Session(engine) as session, session.begin():
        issued = SqlAlchemyApiClientRepository(session).create_client(
            f"fx-{uuid.uuid4().hex[:8]}", ["payments:refund", "payments:read", "withdrawals:write", "withdrawals:read"])
    return {"X-API-Key": issued.key}


def checked(spec: dict[str, Any], resp: requests.Response, expect: int) -> dict[str, Any]:
    assert resp.status_code == expect, resp.text
    body = resp.json()
    check_response(spec, resp.request.method or "GET", resp.request.path_url, resp.status_code,
                   resp.headers["Content-Type"], body)
    return body


def event_data(engine: Any, subject: str, event_type: str) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxEventRow.payload).where(
            OutboxEventRow.subject == subject, OutboxEventRow.event_type == event_type)).scalars().all()
    assert len(rows) == 1, rows
    return json.loads(rows[0])["data"]


def test_responses_and_events_carry_canonical_amounts(api: str, spec: dict, service: dict, engine: Any) -> None:
    body = {"amount": 123450, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    resp = requests.post(f"{api}/payments/topup", json=body, headers=user_headers("u_fx", uuid.uuid4().hex),
                         timeout=30)
    paid = checked(spec, resp, 201)
    # The sample: 88.850 INR and 1.0520 USD per EUR, so 1,234.50 INR is 14.6167 USD.
    assert (paid["canonical_amount"], paid["canonical_currency"], paid["amount_display"]) == (1462, "USD", "₹1,234.50")
    assert checked(spec, requests.get(f"{api}/payments/{paid['id']}", headers=user_headers("u_fx"), timeout=10),
                   200) == paid
    captured = event_data(engine, paid["id"], "PAYMENT_CAPTURED")
    assert (captured["canonical_amount"], captured["canonical_currency"]) == (1462, "USD")

    resp = requests.post(f"{api}/payments/{paid['id']}/refunds", json={"amount": 12345},
                         headers={**service, "Idempotency-Key": uuid.uuid4().hex}, timeout=30)
    refund = checked(spec, resp, 201)
    assert (refund["canonical_amount"], refund["amount_display"]) == (146, "₹123.45")
    if refund["status"] == "SUCCEEDED":
        refunded = event_data(engine, paid["id"], "PAYMENT_REFUNDED")
        assert (refunded["canonical_amount"], refunded["canonical_currency"]) == (146, "USD")

    jpy = checked(spec, requests.post(f"{api}/payments/topup", json={**body, "amount": 5000, "currency": "JPY"},
                                      headers=user_headers("u_fx", uuid.uuid4().hex), timeout=30), 201)
    assert (jpy["canonical_amount"], jpy["amount_display"]) == (3218, "JP¥5,000")  # 5000 / 163.45 * 1.052

    withdrawal = {"user_id": "u_fx", "amount": 100_000, "currency": "INR", "mode": "UPI",
                  "beneficiary": {"name": "A Kumar", "vpa": "akumar@okaxis"}}
    headers = {**service, "Idempotency-Key": uuid.uuid4().hex}
    resp = requests.post(f"{api}/withdrawals", json=withdrawal, headers=headers, timeout=30)
    w = checked(spec, resp, 202)
    assert (w["canonical_amount"], w["canonical_currency"], w["amount_display"]) == (1184, "USD", "₹1,000.00")
    assert w["beneficiary"] == {"name": "A Kumar", "vpa": "akumar@okaxis"}


@pytest.fixture
def hanging_feed() -> Iterator[str]:
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            release.wait(120)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/eurofxref-daily.xml"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_a_hanging_rate_feed_delays_no_top_up(api_env: dict[str, str], hanging_feed: str, tmp_path_factory) -> None:
    env = {**api_env, "FX_RATES_URL": hanging_feed, "FX_FETCH_TIMEOUT_SECONDS": "120"}
    proc, url = start_api(env, tmp_path_factory.mktemp("fx-hang"), workers=1)
    try:
        spec = requests.get(f"{url}/openapi.json", timeout=10).json()
        for _ in range(3):
            body = {"amount": 50_000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
            # Each top-up answers well within the feed's 120 s: the refresh never sits on the request path.
            resp = requests.post(f"{url}/payments/topup", json=body, headers=user_headers("u_fx2", uuid.uuid4().hex),
                                 timeout=30)
            paid = checked(spec, resp, 201)
            assert (paid["canonical_amount"], paid["canonical_currency"]) == (None, None)
            assert paid["amount_display"] == "₹500.00"
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert 'canonical_amount_missing_total{reason="no_rates"}' in metrics
    finally:
        proc.stop()
