"""An API process killed between the gateway charge and its commit loses nothing: the PENDING row
was committed before the call, reconciliation finds the charge by our id, and the event follows."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import requests
from sqlalchemy import create_engine, select

from payment_service.adapters.orm import OutboxEventRow, PaymentRow
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for

from .conftest import REPO, start_api, user_headers


def test_api_killed_mid_charge_then_reconciled(api_env, e2e_sandbox, tmp_path: Path) -> None:
    engine = create_engine(api_env["DATABASE_URL"])
    user, key = f"u_crash_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    body = {"amount": 31337, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    # The gateway takes 2 s to answer: the charge is in flight when the API dies.
    requests.post(e2e_sandbox.url + "/_sandbox/faults", json={"mode": "latency", "latency_ms": 2000,
                                                              "path": "/stripe/v1/payment_intents$", "method": "POST",
                                                              "remaining": 1}, timeout=5)
    # A dead request holds its key, and the payment it was charging, until the lock lapses (409
    # idempotency_key_in_use till then; the reconciliation sweep skips the payment till then). When a
    # payment is first due for reconciliation is decided when it is recorded: by the API's settings.
    # The claim outlasts a whole gateway call (6 x GATEWAY_TIMEOUT_SECONDS): 3 s calls, an 18 s claim.
    api_env = {**api_env, "IDEMPOTENCY_LOCK_SECONDS": "3", "RECONCILE_AFTER_SECONDS": "1",
               "GATEWAY_TIMEOUT_SECONDS": "3"}
    api, url = start_api(api_env, tmp_path, workers=1)

    def client() -> None:
        try:
            requests.post(f"{url}/payments/topup", json=body, headers=user_headers(user, key), timeout=10)
        except requests.RequestException:
            pass  # the server died under us: exactly the point

    t = threading.Thread(target=client)
    t.start()
    pid = wait_for(lambda: _payment_of(engine, user), what="the PENDING row")[0]
    time.sleep(0.3)
    api.stop(sig=signal.SIGKILL)
    t.join(15)
    assert _payment_of(engine, user) == (pid, "PENDING")
    wait_for(lambda: e2e_sandbox.sandbox.store.find(
        lambda o: o.get("object") == "payment_intent" and o.get("metadata", {}).get("payment_id") == pid
        and o.get("status") == "succeeded"), what="the gateway to finish the charge")
    assert _events(engine, pid) == []

    env = {**api_env, "RECONCILE_AFTER_SECONDS": "1", "WORKER_RECONCILE_INTERVAL_SECONDS": "0.5"}
    worker = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, tmp_path / "worker.log")
    try:
        wait_for(lambda: _payment_of(engine, user) == (pid, "CAPTURED"), timeout=45, what="reconciliation")
    finally:
        worker.stop()
    assert _events(engine, pid) == ["PAYMENT_CAPTURED"]

    # The client's retry with the same key gets the captured payment, and no second charge happens.
    api2, url2 = start_api(api_env, tmp_path, workers=1)
    try:
        resp = requests.post(f"{url2}/payments/topup", json=body, headers=user_headers(user, key), timeout=30)
        assert resp.status_code == 201 and resp.json()["id"] == pid and resp.json()["status"] == "CAPTURED"
    finally:
        api2.stop()
    intents = e2e_sandbox.sandbox.store.find(
        lambda o: o.get("object") == "payment_intent" and o.get("metadata", {}).get("payment_id") == pid)
    assert len(intents) == 1
    assert _events(engine, pid) == ["PAYMENT_CAPTURED"]
    engine.dispose()


def _payment_of(engine, user: str) -> tuple[str, str] | None:
    with engine.connect() as conn:
        row = conn.execute(select(PaymentRow.id, PaymentRow.status).where(PaymentRow.user_id == user)).first()
    return None if row is None else (row[0], row[1])


def _events(engine, pid: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxEventRow.event_type).where(OutboxEventRow.subject == pid)).scalars())
