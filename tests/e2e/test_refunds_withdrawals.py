"""Refunds and withdrawals end to end: a running API (gunicorn), a running worker, the gateway sandbox
delivering signed webhooks, MariaDB, and the outbox read straight from the database (no relay)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import GatewayEventRow, OutboxEventRow, RefundRow, WithdrawalRequestRow
from payment_service.domain.cards import find_card_number_field
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for

from .conftest import REPO, start_api, user_headers, webhooks_to

pytestmark = pytest.mark.e2e

# Made-up account numbers. Neither passes the Luhn check, so no log filter would mask them by luck:
# if one showed up anywhere, the grep at the end would see it.
ACCOUNT_IMPS = "50100234567891"
ACCOUNT_NEFT = "91823746501929"
# One that does pass Luhn (16 digits): the card-number guard must let it through on /withdrawals only.
ACCOUNT_LUHN = "7992739871300008"
ALL_ACCOUNTS = (ACCOUNT_IMPS, ACCOUNT_NEFT, ACCOUNT_LUHN)



def _is_card_number(number: str) -> bool:
    return find_card_number_field({"n": number}) is not None


assert not _is_card_number(ACCOUNT_IMPS) and not _is_card_number(ACCOUNT_NEFT) and _is_card_number(ACCOUNT_LUHN)


def key() -> str:
    return uuid.uuid4().hex



# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("refunds-withdrawals")


@pytest.fixture(scope="module")
def api(api_env: dict[str, str], logs: Path) -> Iterator[tuple[str, ServiceProcess]]:
    proc, url = start_api(api_env, logs)
    try:
        yield url, proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def worker(api_env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    # Refund retries come quickly; the payout poll keeps its slow defaults, so the webhook tests below see
    # webhooks settle payouts (the poll has its own test, with its own worker).
    env = {**api_env, "WORKER_WEBHOOK_INTERVAL_SECONDS": "0.2", "WORKER_REFUND_INTERVAL_SECONDS": "0.5",
           "REFUND_RETRY_AFTER_SECONDS": "1"}
    proc = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, logs / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def url(api, e2e_sandbox, worker) -> Iterator[str]:
    with webhooks_to(api[0], e2e_sandbox) as api_url:
        yield api_url


@pytest.fixture(scope="module")
def client_key(engine):
    def make(*scopes: str) -> dict[str, str]:
        with Session(engine) as session:
            issued = SqlAlchemyApiClientRepository(session).create_client(f"svc-{uuid.uuid4().hex[:8]}", scopes)
            session.commit()
        return {"X-API-Key": issued.key}

    return make


@pytest.fixture(scope="module")
def refunder(client_key) -> dict[str, str]:
    return client_key("payments:refund", "payments:read")


@pytest.fixture(scope="module")
def payouts(client_key) -> dict[str, str]:
    return client_key("withdrawals:write", "withdrawals:read")


@pytest.fixture
def sandbox_knobs(e2e_sandbox) -> Iterator[Any]:
    def set_knobs(**knobs: Any) -> None:
        resp = requests.post(e2e_sandbox.url + "/_sandbox/webhooks", json=knobs, timeout=10)
        assert resp.status_code == 200, resp.text

    yield set_knobs
    set_knobs(duplicate=0, reorder=False, drop=0)
    requests.delete(e2e_sandbox.url + "/_sandbox/faults", timeout=10)


# --- helpers ---------------------------------------------------------------------------------


def topup(url: str, user: str, amount: int = 50_000, gateway: str = "stripe", token: str = "pm_card_visa") -> dict:
    body = {"amount": amount, "currency": "INR", "gateway": gateway, "token": token,
            "return_url": "https://wallet.example/back"}
    resp = requests.post(f"{url}/payments/topup", json=body, headers=user_headers(user, key()), timeout=30)
    assert resp.status_code in (201, 202), resp.text
    return resp.json()


def post_refund(url: str, headers: dict, payment_id: str, body: dict | None = None,
                idem: str | None = None) -> requests.Response:
    return requests.post(f"{url}/payments/{payment_id}/refunds", json=body or {},
                         headers={**headers, "Idempotency-Key": idem or key()}, timeout=30)


def refunded_events(engine, payment_id: str) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxEventRow.payload).where(
            OutboxEventRow.subject == payment_id, OutboxEventRow.event_type == "PAYMENT_REFUNDED")
            .order_by(OutboxEventRow.id)).scalars()
        return [json.loads(r) for r in rows]


def refund_status(engine, refund_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(RefundRow.status).where(RefundRow.id == refund_id)).scalar_one_or_none()


def bank(account: str = ACCOUNT_IMPS) -> dict:
    return {"name": "A Kumar", "account_number": account, "ifsc": "HDFC0000123"}


def post_withdrawal(url: str, headers: dict, mode: str = "IMPS", beneficiary: dict | None = None,
                    amount: int = 100_000, idem: str | None = None, user: str = "u_wd") -> requests.Response:
    body = {"user_id": user, "amount": amount, "currency": "INR", "mode": mode,
            "beneficiary": beneficiary or (bank() if mode != "UPI" else {"name": "A Kumar", "vpa": "a.kumar@okhdfc"})}
    return requests.post(f"{url}/withdrawals", json=body, headers={**headers, "Idempotency-Key": idem or key()},
                         timeout=30)


def withdrawal_row(engine, withdrawal_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(WithdrawalRequestRow).where(WithdrawalRequestRow.id == withdrawal_id)).one()


def wd_events(engine, withdrawal_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxEventRow.event_type).where(OutboxEventRow.subject == withdrawal_id)
                                 .order_by(OutboxEventRow.id)).scalars())


def payout_inbox(engine, payout_id: str, with_ids: bool = False) -> list[tuple[str, ...]]:
    """(event type, inbox status[, gateway event id]) of the payout's stored webhooks, in arrival order."""
    columns = [GatewayEventRow.event_type, GatewayEventRow.status]
    if with_ids:
        columns.append(GatewayEventRow.gateway_event_id)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(*columns)
            .where(GatewayEventRow.gateway == "razorpay", GatewayEventRow.object_id == payout_id)
            .order_by(GatewayEventRow.id)).all()]


def initiated_stored(engine, payout_id: str) -> None:
    """Wait until the payout's creation webhook has reached us, so later knobs do not catch it."""
    wait_for(lambda: any(t == "payout.initiated" for t, _ in payout_inbox(engine, payout_id)),
             what="payout.initiated")


def admin(e2e_sandbox, payout_id: str, action: str, **body: Any) -> dict:
    resp = requests.post(f"{e2e_sandbox.url}/razorpay/_admin/payouts/{payout_id}/{action}", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def gateway_payout_id(engine, withdrawal_id: str) -> str:
    return wait_for(lambda: withdrawal_row(engine, withdrawal_id).gateway_payout_id, what="the payout id")


# --- refunds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("gateway", "token"), [("stripe", "pm_card_visa"), ("razorpay", "tok_rzp_success")])
def test_partial_then_full_refund(url, engine, refunder, e2e_sandbox, gateway, token) -> None:
    p = topup(url, f"u_rf_{gateway}", gateway=gateway, token=token)
    assert p["status"] == "CAPTURED"
    first = post_refund(url, refunder, p["id"], {"amount": 20_000, "reason": "partial"})
    assert first.status_code == 201, first.text
    r1 = first.json()
    assert r1["id"].startswith("re_") and r1["payment_id"] == p["id"] and r1["amount"] == 20_000
    assert r1["status"] == "SUCCEEDED" and r1["currency"] == "INR" and r1["reason"] == "partial"
    assert r1["created_at"] and r1["updated_at"] and r1["gateway_refund_id"]
    got = requests.get(f"{url}/payments/{p['id']}", headers=user_headers(f"u_rf_{gateway}"), timeout=10).json()
    assert got["refunded_amount"] == 20_000 and got["status"] == "CAPTURED"
    second = post_refund(url, refunder, p["id"])  # no amount: the 30000 left
    assert second.status_code == 201 and second.json()["amount"] == 30_000 and second.json()["status"] == "SUCCEEDED"
    got = requests.get(f"{url}/payments/{p['id']}", headers=refunder, timeout=10).json()
    assert got["refunded_amount"] == 50_000
    listing = requests.get(f"{url}/payments/{p['id']}/refunds", headers=user_headers(f"u_rf_{gateway}"), timeout=10)
    assert [r["id"] for r in listing.json()["data"]] == [r1["id"], second.json()["id"]]
    one = requests.get(f"{url}/payments/{p['id']}/refunds/{r1['id']}", headers=refunder, timeout=10)
    assert one.status_code == 200 and one.json() == r1
    assert requests.get(f"{url}/payments/{p['id']}/refunds/{r1['id']}", headers=user_headers("u_other"),
                        timeout=10).status_code == 404
    # The gateway's refund webhooks arrive and are applied: they find the refunds finished already.
    wait_for(lambda: _refund_webhooks_applied(engine, gateway, [r1["gateway_refund_id"]]), what="refund webhooks")
    events = refunded_events(engine, p["id"])
    assert [(e["data"]["refund_id"], e["data"]["amount"]) for e in events] == [(r1["id"], 20_000),
                                                                              (second.json()["id"], 30_000)]
    data = events[0]["data"]
    assert data["payment_id"] == p["id"] and data["user_id"] == f"u_rf_{gateway}" and data["currency"] == "INR"
    assert data["gateway"] == gateway and events[0]["type"] == "PAYMENT_REFUNDED"


def _refund_webhooks_applied(engine, gateway: str, refund_ids: list[str]) -> bool:
    with engine.connect() as conn:
        rows = conn.execute(select(GatewayEventRow.status).where(
            GatewayEventRow.gateway == gateway, GatewayEventRow.object_id.in_(refund_ids),
            GatewayEventRow.event_type.like("refund.%"))).scalars().all()
    return bool(rows) and all(s in ("APPLIED", "IGNORED") for s in rows)


def test_over_refund_and_not_refundable_are_422(url, engine, refunder) -> None:
    p = topup(url, "u_rf_over", amount=10_000)
    assert post_refund(url, refunder, p["id"], {"amount": 6000}).status_code == 201
    resp = post_refund(url, refunder, p["id"], {"amount": 5000})
    assert resp.status_code == 422 and resp.headers["Content-Type"] == "application/problem+json"
    body = resp.json()
    assert body["code"] == "refund_exceeds_captured" and body["errors"][0]["field"] == "amount"
    assert "4000" in body["detail"]
    pending = topup(url, "u_rf_over", token="pm_card_threeDSecure2Required")
    assert pending["status"] == "PENDING_3DS"
    resp = post_refund(url, refunder, pending["id"])
    assert resp.status_code == 422 and resp.json()["code"] == "payment_not_refundable"
    assert post_refund(url, refunder, "pay_nobody").status_code == 404
    bad = post_refund(url, refunder, p["id"], {"amount": -1})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "amount"
    got = requests.get(f"{url}/payments/{p['id']}", headers=refunder, timeout=10).json()
    assert got["refunded_amount"] == 6000 and len(refunded_events(engine, p["id"])) == 1


def test_idempotent_replay_refunds_once(url, engine, refunder, e2e_sandbox) -> None:
    p = topup(url, "u_rf_idem", amount=10_000)
    idem = key()
    first = post_refund(url, refunder, p["id"], {"amount": 1000}, idem)
    again = post_refund(url, refunder, p["id"], {"amount": 1000}, idem)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = post_refund(url, refunder, p["id"], {"amount": 2000}, idem)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    assert len(_stripe_refunds(e2e_sandbox, p["gateway_payment_id"])) == 1  # one gateway call
    with engine.connect() as conn:
        assert conn.execute(select(RefundRow.id).where(RefundRow.payment_id == p["id"])).scalars().all() == [
            first.json()["id"]]
    assert len(refunded_events(engine, p["id"])) == 1


def test_wrong_scope_is_403(url, client_key) -> None:
    p = topup(url, "u_rf_scope", amount=10_000)
    reader = client_key("payments:read")
    resp = post_refund(url, reader, p["id"], {"amount": 100})
    assert resp.status_code == 403 and resp.json()["code"] == "insufficient_scope"
    assert post_refund(url, user_headers("u_rf_scope"), p["id"], {"amount": 100}).status_code == 403
    assert post_refund(url, {}, p["id"], {"amount": 100}).status_code == 401
    refund_only = client_key("payments:refund")
    assert post_withdrawal(url, refund_only).status_code == 403
    writer = client_key("withdrawals:write")
    w = post_withdrawal(url, writer)
    assert w.status_code == 202
    assert requests.get(f"{url}/withdrawals/{w.json()['id']}", headers=writer, timeout=10).status_code == 403
    reader_wd = client_key("withdrawals:read")
    assert requests.get(f"{url}/withdrawals/{w.json()['id']}", headers=reader_wd, timeout=10).status_code == 200
    assert post_withdrawal(url, reader_wd).status_code == 403
    assert post_withdrawal(url, user_headers("u_wd")).status_code == 403


def test_gateway_down_503_then_the_retry_resumes_the_same_refund(url, engine, refunder, e2e_sandbox,
                                                                   sandbox_knobs) -> None:
    p = topup(url, "u_rf_down", amount=10_000)
    fault = {"mode": "error", "status": 503, "method": "POST", "path": "^/stripe/v1/refunds$", "remaining": 1}
    assert requests.post(e2e_sandbox.url + "/_sandbox/faults", json=fault, timeout=10).status_code == 201
    idem = key()
    down = post_refund(url, refunder, p["id"], {"amount": 2500}, idem)
    assert down.status_code == 503 and down.json()["code"] == "gateway_unavailable"
    with engine.connect() as conn:
        (refund_id, status) = conn.execute(select(RefundRow.id, RefundRow.status)
                                           .where(RefundRow.payment_id == p["id"])).one()
    assert status == "PENDING"
    again = post_refund(url, refunder, p["id"], {"amount": 2500}, idem)
    assert again.status_code == 201 and again.json()["id"] == refund_id
    wait_for(lambda: refund_status(engine, refund_id) == "SUCCEEDED", what="the refund")  # client or worker
    assert len(refunded_events(engine, p["id"])) == 1


def test_lost_refund_response_is_finished_by_worker_or_webhook_once(url, engine, refunder, e2e_sandbox,
                                                                    sandbox_knobs) -> None:
    p = topup(url, "u_rf_lost", amount=10_000)
    fault = {"mode": "lost_response", "method": "POST", "path": "^/stripe/v1/refunds$", "remaining": 1}
    assert requests.post(e2e_sandbox.url + "/_sandbox/faults", json=fault, timeout=10).status_code == 201
    resp = post_refund(url, refunder, p["id"], {"amount": 3000})
    assert resp.status_code == 503
    with engine.connect() as conn:
        refund_id = conn.execute(select(RefundRow.id).where(RefundRow.payment_id == p["id"])).scalar_one()
    # Nobody retries the request: the refund.created webhook or the worker's retry job finishes it.
    wait_for(lambda: refund_status(engine, refund_id) == "SUCCEEDED", what="the pending refund to finish")
    time.sleep(1.5)  # let the other path run too
    assert len(refunded_events(engine, p["id"])) == 1
    refunds_at_gateway = [o for o in _stripe_refunds(e2e_sandbox, p["gateway_payment_id"])]
    assert len(refunds_at_gateway) == 1 and refunds_at_gateway[0]["amount"] == 3000


def _stripe_refunds(e2e_sandbox, intent_id: str) -> list[dict]:
    store = e2e_sandbox.sandbox.store
    return store.find(lambda o: o.get("object") == "refund" and o.get("payment_intent") == intent_id)


# --- withdrawals -----------------------------------------------------------------------------


def assert_no_account(resp: requests.Response) -> None:
    for account in ALL_ACCOUNTS:
        assert account not in resp.text


@pytest.mark.parametrize(("mode", "beneficiary", "summary"), [
    ("IMPS", bank(ACCOUNT_IMPS), {"name": "A Kumar", "account_last4": ACCOUNT_IMPS[-4:]}),
    ("NEFT", bank(ACCOUNT_NEFT), {"name": "A Kumar", "account_last4": ACCOUNT_NEFT[-4:]}),
    ("UPI", {"name": "A Kumar", "vpa": "a.kumar@okhdfc"}, {"name": "A Kumar", "vpa": "a.kumar@okhdfc"}),
])
def test_withdrawal_settled_by_webhook(url, engine, payouts, e2e_sandbox, mode, beneficiary, summary) -> None:
    resp = post_withdrawal(url, payouts, mode, beneficiary, user=f"u_wd_{mode}")
    assert resp.status_code == 202, resp.text
    assert_no_account(resp)
    w = resp.json()
    assert w["id"].startswith("wd_") and w["status"] == "PROCESSING" and w["mode"] == mode
    assert w["beneficiary"] == summary and w["utr"] is None and w["failure_reason"] is None
    assert w["user_id"] == f"u_wd_{mode}" and w["amount"] == 100_000 and w["currency"] == "INR"
    payout_id = gateway_payout_id(engine, w["id"])
    admin(e2e_sandbox, payout_id, "settle", utr=f"UTR{mode}123")
    wait_for(lambda: withdrawal_row(engine, w["id"]).status == "SETTLED", what="the payout.processed webhook")
    got = requests.get(f"{url}/withdrawals/{w['id']}", headers=payouts, timeout=10)
    assert got.status_code == 200 and got.json()["utr"] == f"UTR{mode}123" and got.json()["status"] == "SETTLED"
    assert_no_account(got)
    assert wd_events(engine, w["id"]) == ["WITHDRAWAL_SETTLED"]
    assert ("payout.processed", "APPLIED") in payout_inbox(engine, payout_id)


def test_failed_payout(url, engine, payouts, e2e_sandbox) -> None:
    w = post_withdrawal(url, payouts).json()
    admin(e2e_sandbox, gateway_payout_id(engine, w["id"]), "fail", reason="Beneficiary bank rejected")
    wait_for(lambda: withdrawal_row(engine, w["id"]).status == "FAILED", what="the payout.failed webhook")
    got = requests.get(f"{url}/withdrawals/{w['id']}", headers=payouts, timeout=10).json()
    assert got["failure_reason"] == "Beneficiary bank rejected" and got["utr"] is None
    assert wd_events(engine, w["id"]) == ["WITHDRAWAL_FAILED"]


def test_reversal_after_settlement(url, engine, payouts, e2e_sandbox) -> None:
    w = post_withdrawal(url, payouts).json()
    payout_id = gateway_payout_id(engine, w["id"])
    admin(e2e_sandbox, payout_id, "settle")
    wait_for(lambda: withdrawal_row(engine, w["id"]).status == "SETTLED", what="settlement")
    admin(e2e_sandbox, payout_id, "reverse", reason="Account closed")
    wait_for(lambda: withdrawal_row(engine, w["id"]).status == "REVERSED", what="the payout.reversed webhook")
    row = withdrawal_row(engine, w["id"])
    assert row.utr and row.failure_reason == "Account closed"
    assert wd_events(engine, w["id"]) == ["WITHDRAWAL_SETTLED", "WITHDRAWAL_REVERSED"]


def test_duplicate_payout_webhooks_apply_once(url, engine, payouts, e2e_sandbox, sandbox_knobs) -> None:
    w = post_withdrawal(url, payouts).json()
    payout_id = gateway_payout_id(engine, w["id"])
    initiated_stored(engine, payout_id)
    sandbox_knobs(duplicate=4)
    admin(e2e_sandbox, payout_id, "settle")
    wait_for(lambda: withdrawal_row(engine, w["id"]).status == "SETTLED", what="settlement")
    [event_id] = [i for t, _, i in payout_inbox(engine, payout_id, with_ids=True) if t == "payout.processed"]

    def delivered() -> int:
        deliveries = requests.get(e2e_sandbox.url + "/_sandbox/webhooks/deliveries?gateway=razorpay", timeout=10)
        return len([d for d in deliveries.json() if d["event_id"] == event_id and d["delivered"]])

    wait_for(lambda: delivered() == 5, what="five deliveries of payout.processed")
    wait_for(lambda: all(s in ("APPLIED", "IGNORED") for _, s in payout_inbox(engine, payout_id)), what="applied")
    assert [t for t, _ in payout_inbox(engine, payout_id)].count("payout.processed") == 1  # stored once
    assert wd_events(engine, w["id"]) == ["WITHDRAWAL_SETTLED"]


def test_reordered_payout_webhooks(url, engine, payouts, e2e_sandbox, sandbox_knobs) -> None:
    w = post_withdrawal(url, payouts).json()
    payout_id = gateway_payout_id(engine, w["id"])
    initiated_stored(engine, payout_id)
    sandbox_knobs(reorder=True, reorder_batch=2)
    admin(e2e_sandbox, payout_id, "settle", utr="UTRREORDER1")
    admin(e2e_sandbox, payout_id, "reverse", reason="Returned by bank")
    # payout.reversed is delivered before payout.processed. The worker's appliers take one batch in
    # parallel, and the two events queue on the withdrawal's row lock in either order: the reversal
    # first settles and reverses in one go (the settlement then moves nothing: IGNORED), or the
    # settlement first moves it to SETTLED and the reversal from there (both APPLIED). Either way the
    # withdrawal ends the same, with each event published once. (The reversal-first path alone, in
    # order: tests/unit/test_refunds_withdrawals.py::test_reversed_before_processed_settles_then_reverses_once.)
    wait_for(lambda: withdrawal_row(engine, w["id"]).status == "REVERSED", what="the reversal")
    wait_for(lambda: len(payout_inbox(engine, payout_id)) >= 3
             and all(s in ("APPLIED", "IGNORED") for _, s in payout_inbox(engine, payout_id)), what="both applied")
    inbox = [pair for pair in payout_inbox(engine, payout_id) if pair[0] != "payout.initiated"]
    assert [t for t, _ in inbox][-2:] == ["payout.reversed", "payout.processed"]
    assert inbox[-2:] in ([("payout.reversed", "APPLIED"), ("payout.processed", "IGNORED")],
                          [("payout.reversed", "APPLIED"), ("payout.processed", "APPLIED")])
    row = withdrawal_row(engine, w["id"])
    assert row.utr == "UTRREORDER1" and row.failure_reason == "Returned by bank"
    assert wd_events(engine, w["id"]) == ["WITHDRAWAL_SETTLED", "WITHDRAWAL_REVERSED"]


def test_payout_settled_by_the_polling_job(url, engine, payouts, e2e_sandbox, api_env, logs,
                                           sandbox_knobs) -> None:
    # The payout.processed webhook is dropped: only a worker polling PROCESSING payouts can notice.
    poller = ServiceProcess(
        [str(VENV_BIN / "payment-service"), "worker"],
        {**api_env, "WORKER_PAYOUT_INTERVAL_SECONDS": "0.5", "PAYOUT_POLL_AFTER_SECONDS": "1"},
        REPO, logs / "worker-poll.log",
    )
    try:
        w = post_withdrawal(url, payouts, "UPI").json()
        payout_id = gateway_payout_id(engine, w["id"])
        initiated_stored(engine, payout_id)
        sandbox_knobs(drop=1)
        admin(e2e_sandbox, payout_id, "settle", utr="UTRPOLLED1")
        # The API set when to look again from its own PAYOUT_POLL_AFTER_SECONDS (300 s): let that time pass.
        with engine.begin() as conn:
            conn.execute(text("UPDATE withdrawal_requests SET next_attempt_at = :t WHERE id = :id"),
                         {"t": datetime.now(UTC).replace(tzinfo=None), "id": w["id"]})
        wait_for(lambda: withdrawal_row(engine, w["id"]).status == "SETTLED", timeout=30, what="the poll")
        assert withdrawal_row(engine, w["id"]).utr == "UTRPOLLED1"
        assert [t for t, _ in payout_inbox(engine, payout_id)] == ["payout.initiated"]  # no webhook came
        assert wd_events(engine, w["id"]) == ["WITHDRAWAL_SETTLED"]
    finally:
        poller.stop()


def test_withdrawal_idempotent_replay_and_validation(url, engine, payouts) -> None:
    idem = key()
    first = post_withdrawal(url, payouts, idem=idem, beneficiary=bank(ACCOUNT_LUHN))
    assert first.status_code == 202, first.text  # an account number is not card data on /withdrawals
    again = post_withdrawal(url, payouts, idem=idem, beneficiary=bank(ACCOUNT_LUHN))
    assert again.status_code == 202 and again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    other = post_withdrawal(url, payouts, idem=idem, beneficiary=bank(ACCOUNT_IMPS))
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    assert_no_account(first)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT COUNT(*) FROM withdrawal_requests WHERE id = :i"), {"i": first.json()["id"]})
        assert n.scalar_one() == 1
    bad = post_withdrawal(url, payouts, "UPI", beneficiary={"name": "AK", "account_number": ACCOUNT_NEFT,
                                                             "ifsc": "hdfc0000123"}, amount=1_00_000_01)
    assert bad.status_code == 422 and bad.json()["code"] == "validation_failed"
    fields = {e["field"] for e in bad.json()["errors"]}
    assert fields == {"amount", "beneficiary.name", "beneficiary.vpa", "beneficiary.account_number",
                      "beneficiary.ifsc"}
    assert_no_account(bad)
    short = post_withdrawal(url, payouts, beneficiary=bank("12345678"))
    assert short.status_code == 422 and [e["field"] for e in short.json()["errors"]] == ["beneficiary.account_number"]
    wrong = post_withdrawal(url, payouts, beneficiary={**bank(), "extra": 1})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "beneficiary.extra"
    # A card number is still refused anywhere else in the body.
    card = post_withdrawal(url, payouts, beneficiary={**bank(), "name": "4242424242424242"})
    assert card.status_code == 422 and card.json()["code"] == "card_data_not_accepted"
    assert "4242424242424242" not in card.text


def test_the_full_account_number_is_nowhere(engine, api, worker) -> None:
    """Runs last: every table's text, and the logs of the API and the worker processes."""
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        dump = []
        for table in tables:
            for row in conn.execute(text(f"SELECT * FROM `{table}`")):  # noqa: S608 - our own table names
                dump.append(" ".join(str(v) for v in row))
    everything = "\n".join(dump)
    assert "withdrawal_requests" in tables and ACCOUNT_IMPS[-4:] in everything  # the grep does see the table
    for account in ALL_ACCOUNTS:
        assert account not in everything, f"account number found in the database ({account[-4:]})"
    logs = api[1].output() + worker.output()
    assert "withdrawal recorded" in logs or "razorpay payout created" in logs
    for account in ALL_ACCOUNTS:
        assert account not in logs, f"account number found in a log ({account[-4:]})"
