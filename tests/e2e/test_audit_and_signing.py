"""The audit trail and signed requests end to end: `payment-service serve` and `payment-service worker`
on MariaDB, the gateway sandbox delivering signed webhooks, everything over HTTP.

A test per kind of actor (user, service client, gateway, job; the CLI's is in
tests/integration/test_audit_db.py), canaries that must appear in no audit row, GET /audit-events,
and each way a signed request can be right or wrong.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from config.settings import DEV_CLIENT_SIGNING_MASTER_KEY
from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import AuditEventRow, PaymentRow, WithdrawalRequestRow
from payment_service.services.api_keys import signature_header
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for

from .conftest import REPO, start_api, user_headers, webhooks_to

pytestmark = pytest.mark.e2e

CANARY_CARD = "4111111111111111"
CANARY_ACCOUNT = "50100998877665"  # not Luhn-valid: nothing would mask it by luck


def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def env(api_env: dict[str, str]) -> dict[str, str]:
    # 3-D Secure expires after 2 s and the worker looks every half second; audit rows are sealed as often.
    return {**api_env, "PENDING_3DS_TTL_SECONDS": "2", "WORKER_EXPIRY_INTERVAL_SECONDS": "0.5",
            "AUDIT_SEAL_INTERVAL_SECONDS": "0.5", "WORKER_WEBHOOK_INTERVAL_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="module")
def url(env: dict[str, str], logs: Path, e2e_sandbox: Any) -> Iterator[str]:
    proc, api_url = start_api(env, logs)
    worker = ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, logs / "worker.log")
    try:
        with webhooks_to(api_url, e2e_sandbox):
            yield api_url
    finally:
        worker.stop()
        proc.stop()


@pytest.fixture(scope="module")
def make_client(engine: Any) -> Any:
    def make(*scopes: str, signing: bool = False) -> tuple[dict[str, str], str, str | None]:
        with Session(engine) as session:
            repo = SqlAlchemyApiClientRepository(session)
            name = f"svc-{uuid.uuid4().hex[:8]}"
            issued = repo.create_client(name, scopes)
            secret = repo.enable_signing(name, DEV_CLIENT_SIGNING_MASTER_KEY) if signing else None
            session.commit()
        return {"X-API-Key": issued.key}, issued.client_id, secret.secret if secret else None

    return make


@pytest.fixture(scope="module")
def reader(make_client: Any) -> dict[str, str]:
    return make_client("audit:read")[0]


def events(url: str, reader: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    resp = requests.get(f"{url}/audit-events", params={"limit": 100, **params}, headers=reader, timeout=10)
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return data


def rows_for(url: str, reader: dict[str, str], resource_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in events(url, reader, resource_id=resource_id) if e["action"] == action]


def every_row_as_text(engine: Any) -> str:
    with engine.connect() as conn:
        return "\n".join(json.dumps([str(v) for v in r]) for r in conn.execute(select(AuditEventRow)).all())


# --- a test per kind of actor ------------------------------------------------------------------


def test_user_mutations_and_their_state_changes_name_the_user(url: str, reader: dict[str, str]) -> None:
    body = {"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    resp = requests.post(f"{url}/payments/topup", json=body,
                         headers={**user_headers("u_audit", key()), "X-Request-Id": "req-audit-1"}, timeout=30)
    assert resp.status_code == 201, resp.text
    pid = resp.json()["id"]
    (call,) = rows_for(url, reader, pid, "POST /payments/topup")
    assert (call["actor"], call["outcome"], call["http_status"], call["request_id"], call["resource_type"]) == (
        "user:u_audit", "succeeded", 201, "req-audit-1", "payment")
    assert call["source"] == "127.0.0.1"
    (moved,) = rows_for(url, reader, pid, "payment.captured")
    assert (moved["actor"], moved["request_id"]) == ("user:u_audit", "req-audit-1")
    # A refused mutation is recorded too, saying why and not what: the card number is nowhere.
    refused = requests.post(f"{url}/payments/topup", json={**body, "token": CANARY_CARD},
                            headers=user_headers("u_audit", key()), timeout=30)
    assert refused.status_code == 422
    rejected = [e for e in events(url, reader, actor="user:u_audit") if e["outcome"] == "rejected"]
    assert rejected and "card_data_not_accepted" in rejected[0]["summary"] and rejected[0]["http_status"] == 422
    anonymous = requests.post(f"{url}/payments/topup", json=body, headers={"Idempotency-Key": key()}, timeout=10)
    assert anonymous.status_code == 401
    assert any(e["http_status"] == 401 for e in events(url, reader, actor="anonymous:-"))


def test_service_client_mutations_name_the_client_and_its_key_prefix(
    url: str, reader: dict[str, str], make_client: Any, engine: Any
) -> None:
    payouts, client_id, _ = make_client("withdrawals:write", "withdrawals:read")
    body = {"user_id": "u_wd_audit", "amount": 100_000, "currency": "INR", "mode": "IMPS",
            "beneficiary": {"name": "A Kumar", "account_number": CANARY_ACCOUNT, "ifsc": "HDFC0000123"}}
    resp = requests.post(f"{url}/withdrawals", json=body, headers={**payouts, "Idempotency-Key": key()}, timeout=30)
    assert resp.status_code == 202, resp.text
    wid = resp.json()["id"]
    (call,) = rows_for(url, reader, wid, "POST /withdrawals")
    assert call["actor"] == f"client:{client_id}" and call["actor_key_prefix"] == payouts["X-API-Key"][:12]
    (moved,) = rows_for(url, reader, wid, "withdrawal.processing")
    assert moved["actor"] == f"client:{client_id}"
    # A client without the scope: 403, recorded as refused.
    other, other_id, _ = make_client("payments:read")
    assert requests.post(f"{url}/withdrawals", json=body, headers={**other, "Idempotency-Key": key()},
                         timeout=10).status_code == 403
    (denied,) = events(url, reader, actor=f"client:{other_id}")
    assert denied["outcome"] == "rejected" and denied["http_status"] == 403
    everything = every_row_as_text(engine)
    for secret in (CANARY_ACCOUNT, CANARY_CARD, payouts["X-API-Key"], other["X-API-Key"], reader["X-API-Key"]):
        assert secret not in everything


def test_webhook_state_changes_name_the_gateway(
    url: str, reader: dict[str, str], make_client: Any, engine: Any, e2e_sandbox: Any
) -> None:
    payouts, _, _ = make_client("withdrawals:write")
    body = {"user_id": "u_wd_hook", "amount": 5_000, "currency": "INR", "mode": "UPI",
            "beneficiary": {"name": "A Kumar", "vpa": "a.kumar@okhdfc"}}
    resp = requests.post(f"{url}/withdrawals", json=body, headers={**payouts, "Idempotency-Key": key()}, timeout=30)
    assert resp.status_code == 202, resp.text
    wid = resp.json()["id"]

    def payout_id() -> str | None:
        with engine.connect() as conn:
            return conn.execute(select(WithdrawalRequestRow.gateway_payout_id)
                                .where(WithdrawalRequestRow.id == wid)).scalar_one()

    pid = wait_for(payout_id, what="the payout id")
    settled = requests.post(f"{e2e_sandbox.url}/razorpay/_admin/payouts/{pid}/settle", json={"utr": "UTRAUD1"},
                            timeout=10)
    assert settled.status_code == 200, settled.text
    (row,) = wait_for(lambda: rows_for(url, reader, wid, "withdrawal.settled"), what="the settlement's audit row")
    assert row["actor"] == "gateway:razorpay" and row["request_id"]  # the webhook's event id


def test_job_state_changes_name_the_job(url: str, reader: dict[str, str], engine: Any) -> None:
    body = {"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_threeDSecure2Required",
            "return_url": "https://wallet.example/back"}
    resp = requests.post(f"{url}/payments/topup", json=body, headers=user_headers("u_3ds_audit", key()), timeout=30)
    assert resp.status_code == 202, resp.text
    pid = resp.json()["id"]

    def status() -> str:
        with engine.connect() as conn:
            return str(conn.execute(select(PaymentRow.status).where(PaymentRow.id == pid)).scalar_one())

    wait_for(lambda: status() == "EXPIRED", timeout=60, what="the expiry job")
    (row,) = wait_for(lambda: rows_for(url, reader, pid, "payment.expired"), timeout=60,
                      what="the expiry's audit row")
    # The job cancels at the gateway and records the expiry; the gateway's webhook about that cancel
    # may be applied first, and then it is the one that lands the expiry (the job then moves nothing).
    # Either way the row names who moved the payment: the job, or the gateway with its event's id.
    by_job = row["actor"] == "job:expire_pending_3ds" and row["request_id"] is None
    by_webhook = row["actor"] == "gateway:stripe" and str(row["request_id"]).startswith("evt_")
    assert by_job or by_webhook, row


def test_rows_are_sealed_by_the_worker_and_the_list_pages_newest_first(url: str, reader: dict[str, str],
                                                                       engine: Any) -> None:
    wait_for(lambda: all(e["seq"] is not None for e in events(url, reader)), what="the worker's sealer")
    first = requests.get(f"{url}/audit-events", params={"limit": 2}, headers=reader, timeout=10).json()
    assert first["has_more"] and len(first["data"]) == 2
    second = requests.get(f"{url}/audit-events", params={"limit": 2, "cursor": first["next_cursor"]},
                          headers=reader, timeout=10).json()
    ids_ = [int(e["id"].removeprefix("aud_")) for e in first["data"] + second["data"]]
    assert ids_ == sorted(ids_, reverse=True) and len(set(ids_)) == 4
    since = requests.get(f"{url}/audit-events", params={"since": first["data"][0]["time"]}, headers=reader,
                         timeout=10).json()["data"]
    assert all(e["time"] >= first["data"][0]["time"] for e in since)
    assert requests.get(f"{url}/audit-events", timeout=10).status_code == 401
    assert requests.get(f"{url}/audit-events", headers=user_headers("u_1"), timeout=10).status_code == 403
    bad = requests.get(f"{url}/audit-events", params={"since": "yesterday"}, headers=reader, timeout=10)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "since"


# --- signed requests --------------------------------------------------------------------------


def _withdrawal_body(user: str = "u_signed") -> bytes:
    return json.dumps({"user_id": user, "amount": 1_000, "currency": "INR", "mode": "UPI",
                       "beneficiary": {"name": "A Kumar", "vpa": "a.kumar@okhdfc"}}).encode()


def _signed_post(url: str, headers: dict[str, str], secret: str | None, body: bytes, *, t: int | None = None,
                 sign_body: bytes | None = None, idem: str | None = None,
                 signature: str | None = None) -> requests.Response:
    path = "/withdrawals"
    hdrs = {**headers, "Idempotency-Key": idem or key(), "Content-Type": "application/json"}
    if signature is not None:
        hdrs["X-Signature"] = signature
    elif secret is not None:
        hdrs["X-Signature"] = signature_header(secret, "POST", path, sign_body if sign_body is not None else body,
                                               t if t is not None else int(time.time()))
    return requests.post(url + path, data=body, headers=hdrs, timeout=30)


def _problem(resp: requests.Response) -> str:
    assert resp.status_code == 401, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    return str(resp.json()["code"])


def test_signed_requests_each_way_right_and_wrong(url: str, make_client: Any, engine: Any) -> None:
    headers, _, secret = make_client("withdrawals:write", "withdrawals:read", signing=True)
    assert secret is not None
    body = _withdrawal_body()

    ok = _signed_post(url, headers, secret, body)
    assert ok.status_code == 202, ok.text
    # Reads may stay unsigned.
    assert requests.get(f"{url}/withdrawals/{ok.json()['id']}", headers=headers, timeout=10).status_code == 200

    assert _problem(_signed_post(url, headers, None, body)) == "signature_required"
    assert _problem(_signed_post(url, headers, secret, body, t=int(time.time()) - 400)) == "signature_expired"
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert _problem(_signed_post(url, headers, wrong, body)) == "signature_invalid"
    assert _problem(_signed_post(url, headers, secret, _withdrawal_body("u_other"), sign_body=body)) == \
        "signature_invalid"
    assert _problem(_signed_post(url, headers, None, body, signature="t=123,v1=nothex")) == "signature_invalid"

    # The same signed request again, to whichever worker process answers: a replay. (A signature covers
    # time, method, path and body, not Idempotency-Key: two identical bodies signed in the same second
    # are one signature, so this body is not the one above.)
    body = _withdrawal_body("u_replay")
    idem, t = key(), int(time.time())
    header = signature_header(secret, "POST", "/withdrawals", body, t)
    first = _signed_post(url, headers, None, body, idem=idem, signature=header)
    assert first.status_code == 202, first.text
    again = _signed_post(url, headers, None, body, idem=idem, signature=header)
    assert _problem(again) == "signature_replayed"
    assert "used before" in again.json()["detail"]
    with engine.connect() as conn:
        refused = conn.execute(select(AuditEventRow.summary).where(AuditEventRow.http_status == 401,
                                                                   AuditEventRow.actor_key_prefix ==
                                                                   headers["X-API-Key"][:12])).scalars().all()
    assert any("signature_replayed" in s for s in refused) and any("signature_expired" in s for s in refused)


def test_a_rotated_signing_secret_overlaps_the_old_one(url: str, make_client: Any, engine: Any) -> None:
    headers, client_id, old = make_client("withdrawals:write", signing=True)
    assert old is not None
    with Session(engine) as session:
        repo = SqlAlchemyApiClientRepository(session)
        name = session.execute(text("SELECT name FROM api_clients WHERE id = :i"), {"i": client_id}).scalar_one()
        new = repo.rotate_signing_secret(name, DEV_CLIENT_SIGNING_MASTER_KEY, expire_old_in=3600).secret
        session.commit()
    assert _signed_post(url, headers, old, _withdrawal_body()).status_code == 202  # during the overlap
    assert _signed_post(url, headers, new, _withdrawal_body()).status_code == 202
    with Session(engine) as session:
        SqlAlchemyApiClientRepository(session).rotate_signing_secret(name, DEV_CLIENT_SIGNING_MASTER_KEY,
                                                                     expire_old_in=0)
        session.commit()
    assert _problem(_signed_post(url, headers, old, _withdrawal_body())) == "signature_invalid"


def test_every_other_mutating_endpoint_leaves_its_row(url: str, reader: dict[str, str], make_client: Any) -> None:
    # Saving and deleting a card ("which user deleted a card"), and a refund by a service client.
    user = user_headers("u_cards_audit")
    saved = requests.post(f"{url}/payment-methods", json={"gateway": "stripe", "token": "pm_card_mastercard"},
                          headers={**user, "Idempotency-Key": key()}, timeout=30)
    assert saved.status_code == 201, saved.text
    mid = saved.json()["id"]
    assert requests.delete(f"{url}/payment-methods/{mid}", headers=user, timeout=30).status_code == 204
    rows = {e["action"]: e for e in events(url, reader, resource_id=mid)}
    assert rows["POST /payment-methods"]["actor"] == "user:u_cards_audit"
    deleted = rows["DELETE /payment-methods/<method_id>"]
    assert (deleted["actor"], deleted["http_status"], deleted["resource_type"]) == (
        "user:u_cards_audit", 204, "payment_method")

    body = {"amount": 3000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
    pid = requests.post(f"{url}/payments/topup", json=body, headers=user_headers("u_refund_audit", key()),
                        timeout=30).json()["id"]
    refunder, client_id, _ = make_client("payments:refund")
    refund = requests.post(f"{url}/payments/{pid}/refunds", json={"amount": 1000},
                           headers={**refunder, "Idempotency-Key": key()}, timeout=30)
    assert refund.status_code == 201, refund.text
    rid = refund.json()["id"]
    (call,) = rows_for(url, reader, rid, "POST /payments/<payment_id>/refunds")
    assert call["actor"] == f"client:{client_id}" and call["resource_type"] == "refund"
    moved = wait_for(lambda: rows_for(url, reader, rid, "refund.succeeded"), what="the refund's status change")
    assert moved[0]["actor"] in (f"client:{client_id}", "gateway:stripe")  # the answer or its webhook, first wins


def test_a_replay_to_another_api_process_is_refused(
    url: str, env: dict[str, str], logs: Path, make_client: Any
) -> None:
    headers, _, secret = make_client("withdrawals:write", signing=True)
    assert secret is not None
    other, other_url = start_api(env, logs, workers=1)
    try:
        body = _withdrawal_body("u_replay_elsewhere")
        header = signature_header(secret, "POST", "/withdrawals", body, int(time.time()))
        assert _signed_post(url, headers, None, body, signature=header).status_code == 202
        assert _problem(_signed_post(other_url, headers, None, body, signature=header)) == "signature_replayed"
    finally:
        other.stop()
