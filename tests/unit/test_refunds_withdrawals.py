"""Refunds and withdrawals against fakes: the keyed requests (RefundFlow, WithdrawalFlow), the webhook
handlers and the worker's sweeps (retry_pending_refunds, resolve_withdrawals)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from payment_service.adapters.outbox import serialize_event
from payment_service.domain.errors import (
    GatewayUnavailable,
    NotFound,
    PaymentNotRefundable,
    RefundExceedsCaptured,
    ValidationFailed,
)
from payment_service.domain.events import EventType
from payment_service.gateways.base import (
    Beneficiary,
    GatewayError,
    PayoutStatus,
    RefundResult,
    RefundStatus,
    WebhookEvent,
)
from payment_service.services import payments as svc
from payment_service.services import refunds, webhooks, withdrawals
from payment_service.services.lifecycle import SweepReport
from payment_service.services.risk import RiskRules

from .fakes import Clock, FakeMoneyOutGateway, fake_uow_factory, run_flow

SETTINGS = svc.PaymentSettings(RiskRules(), 900)
R_SETTINGS = refunds.RefundSettings(retry_after_seconds=60)
ACCOUNT = "000123456789012"  # 15 digits, a made-up account number
W_SETTINGS = withdrawals.WithdrawalSettings(poll_after_seconds=300, retry_after_seconds=60, give_up_after_seconds=3600)
APPLY = webhooks.ApplySettings(SETTINGS, R_SETTINGS, W_SETTINGS)


@pytest.fixture
def env():
    uow_factory, store = fake_uow_factory()
    gw = FakeMoneyOutGateway()
    return uow_factory, store, gw, Clock()


def gateways(gw) -> dict:
    return {"stripe": gw, "razorpay": gw}


def captured_payment(env, amount: int = 10_000, token: str = "pm_card_visa") -> svc.Payment:
    uow_factory, _, gw, clock = env
    cmd = svc.TopUp(user_id="u_1", amount=amount, currency="INR", gateway="stripe", token=token)
    return run_flow(svc.TopUpFlow(cmd, {"stripe": gw}, SETTINGS), uow_factory, now=clock)


def refund(env, payment_id: str, amount: int | None = None, key: str | None = None):
    """POST /payments/{id}/refunds with Idempotency-Key `key` (a new one if None); the refund as stored."""
    uow_factory, _, gw, clock = env
    cmd = refunds.RefundPayment(payment_id=payment_id, amount=amount, reason="customer request")
    flow = refunds.RefundFlow(cmd, gateways(gw), R_SETTINGS)
    return run_flow(flow, uow_factory, key=key, caller="client:wallet", now=clock)


def retry_refunds(env) -> SweepReport:
    uow_factory, _, gw, clock = env
    return refunds.retry_pending_refunds(uow_factory, gateways(gw), R_SETTINGS, now=clock)


def resolve(env) -> SweepReport:
    uow_factory, _, gw, clock = env
    return withdrawals.resolve_withdrawals(uow_factory, gw, W_SETTINGS, now=clock)


def events(store, type_: EventType) -> list:
    return [e for e in store.outbox if e.type == type_]


def deliver(env, event_id: str, event_type: str, payload: dict, reference: str | None, object_id: str | None,
            gateway: str = "stripe") -> bool:
    uow_factory, _, _, clock = env
    return webhooks.store_webhook(WebhookEvent(gateway, event_id, event_type, object_id, reference, payload),
                                  uow_factory, now=clock)


def apply(env) -> int:
    uow_factory, _, gw, clock = env
    return webhooks.apply_due_events(uow_factory, gateways(gw), APPLY, now=clock)


def inbox_statuses(store) -> list[str]:
    return [e.status for e in sorted(store.inbox.values(), key=lambda e: e.id)]


def during(gw, method: str, action) -> list:
    """Run `action()` while the gateway's `method` is in flight (before it answers); its results, in order."""
    seen: list = []
    original = getattr(gw, method)

    def wrapped(*args, **kwargs):
        seen.append(action())
        return original(*args, **kwargs)

    setattr(gw, method, wrapped)
    return seen


# --- refunds ----------------------------------------------------------------------------------


def test_partial_then_default_refund_leaves_nothing_and_one_event_each(env) -> None:
    _, store, gw, _ = env
    p = captured_payment(env)
    first = refund(env, p.id, 3000)
    assert first.status == "SUCCEEDED" and first.amount == 3000 and first.gateway_refund_id == "re_g1"
    assert first.claimed_until is None
    assert store.payments[p.id].refunded_amount == 3000
    rest = refund(env, p.id)  # no amount: what is left
    assert rest.status == "SUCCEEDED" and rest.amount == 7000
    assert store.payments[p.id].refunded_amount == 10_000
    refunded = events(store, EventType.PAYMENT_REFUNDED)
    assert [(e.data["refund_id"], e.data["amount"]) for e in refunded] == [(first.id, 3000), (rest.id, 7000)]
    e = refunded[0]
    assert e.subject == p.id and e.user_id == "u_1"
    assert e.data["payment_id"] == p.id and e.data["currency"] == "INR" and e.data["gateway"] == "stripe"
    assert gw.refund_calls[0] == (p.gateway_payment_id, 3000, first.id, f"{first.id}:refund")
    serialize_event(e)  # the outbox writer accepts it


def test_a_refund_is_two_transactions(env) -> None:
    _, store, _, _ = env
    p = captured_payment(env)
    commits = store.commits
    assert refund(env, p.id, 1000).status == "SUCCEEDED" and store.commits == commits + 2


def test_over_refund_is_refused_and_changes_nothing(env) -> None:
    _, store, gw, _ = env
    p = captured_payment(env)
    refund(env, p.id, 6000)
    keys = len(store.idem)
    with pytest.raises(RefundExceedsCaptured) as exc:
        refund(env, p.id, 4001)
    assert exc.value.errors[0]["field"] == "amount" and "4000" in exc.value.detail
    assert len(store.idem) == keys  # refused in phase 1: not even the key is kept
    refund(env, p.id)  # the 4000 left
    with pytest.raises(RefundExceedsCaptured):
        refund(env, p.id)  # nothing left: even the default is refused
    assert store.payments[p.id].refunded_amount == 10_000
    assert len(store.refunds) == 2 and len(gw.refund_calls) == 2


@pytest.mark.parametrize("token", ["pm_card_threeDSecure2Required", "pm_card_chargeDeclined"])
def test_only_captured_payments_are_refundable(env, token) -> None:
    _, store, gw, _ = env
    p = captured_payment(env, token=token)
    assert p.status in ("PENDING_3DS", "FAILED")
    keys = len(store.idem)
    with pytest.raises(PaymentNotRefundable):
        refund(env, p.id)
    assert store.refunds == {} and gw.refund_calls == [] and len(store.idem) == keys


def test_unknown_payment_is_not_found(env) -> None:
    _, store, _, _ = env
    with pytest.raises(NotFound):
        refund(env, "pay_nobody", 100)
    assert store.idem == {} and store.refunds == {}


def test_gateway_down_leaves_pending_then_the_same_request_resumes_it(env) -> None:
    _, store, gw, clock = env
    p = captured_payment(env)
    gw.unavailable = True
    with pytest.raises(GatewayUnavailable, match="is pending"):
        refund(env, p.id, 2500, key="rk")
    (pending,) = store.refunds.values()
    assert pending.status == "PENDING" and pending.claimed_until is None and pending.attempts == 1
    assert pending.next_attempt_at == clock.t + timedelta(seconds=60)
    assert store.payments[p.id].refunded_amount == 2500  # reserved: a concurrent refund cannot take it
    with pytest.raises(RefundExceedsCaptured):
        refund(env, p.id, 7501)
    gw.unavailable = False
    again = refund(env, p.id, 2500, key="rk")  # the client's retry with the same Idempotency-Key
    assert again.id == pending.id and again.status == "SUCCEEDED"
    assert {c[3] for c in gw.refund_calls} == {f"{pending.id}:refund"}
    assert len(events(store, EventType.PAYMENT_REFUNDED)) == 1
    assert refund(env, p.id, 2500, key="rk").status == "SUCCEEDED"  # replayed: no new call
    assert len([c for c in gw.refund_calls if c[2] == pending.id]) == 2  # one timed out, one worked
    assert store.payments[p.id].refunded_amount == 2500


def test_lost_response_is_finished_by_the_worker_with_the_same_key(env) -> None:
    _, store, gw, clock = env
    p = captured_payment(env)
    gw.refund_lost_response = True
    with pytest.raises(GatewayUnavailable):
        refund(env, p.id, 1000)
    (r,) = store.refunds.values()
    gw.refund_lost_response = False
    assert retry_refunds(env) == SweepReport()  # too fresh
    clock.advance(seconds=61)
    assert retry_refunds(env) == SweepReport(claimed=1, finished=1)
    assert store.refunds[r.id].status == "SUCCEEDED" and store.refunds[r.id].gateway_refund_id == "re_g1"
    assert len(gw.refunds) == 1 and {c[3] for c in gw.refund_calls} == {f"{r.id}:refund"}  # refunded once
    # The gateway's webhook for the same refund arrives afterwards: nothing more happens.
    deliver(env, "evt_r1", "refund.updated", {"refund": {"id": "re_g1", "status": "succeeded", "amount": 1000}},
            r.id, "re_g1")
    apply(env)
    assert inbox_statuses(store) == ["IGNORED"]
    assert len(events(store, EventType.PAYMENT_REFUNDED)) == 1


def test_two_workers_never_send_the_same_refund_together(env) -> None:
    _, store, gw, clock = env
    p = captured_payment(env)
    gw.refund_lost_response = True
    with pytest.raises(GatewayUnavailable):
        refund(env, p.id, 1000)
    gw.refund_lost_response = False
    clock.advance(seconds=61)
    other_worker = during(gw, "refund", lambda: retry_refunds(env))
    assert retry_refunds(env).finished == 1
    assert other_worker == [SweepReport()]  # the batch was claimed: the second worker found nothing to do
    assert len(gw.refund_calls) == 2 and len(gw.refunds) == 1
    assert len(events(store, EventType.PAYMENT_REFUNDED)) == 1


def test_pending_refund_is_completed_by_webhook_once(env) -> None:
    _, store, gw, _ = env
    p = captured_payment(env)
    gw.refund_status = RefundStatus.PENDING
    r = refund(env, p.id, 4000)
    assert r.status == "PENDING" and r.gateway_refund_id == "re_g1" and r.claimed_until is None
    assert events(store, EventType.PAYMENT_REFUNDED) == []
    body = {"refund": {"id": "re_g1", "status": "succeeded", "amount": 4000}}
    for _ in range(3):
        deliver(env, "evt_ok", "refund.updated", body, r.id, "re_g1")  # duplicates: stored once
    deliver(env, "evt_ok2", "refund.updated", body, None, "re_g1")  # found by the gateway's id
    apply(env)
    assert store.refunds[r.id].status == "SUCCEEDED"
    assert inbox_statuses(store) == ["APPLIED", "IGNORED"]
    (evt,) = events(store, EventType.PAYMENT_REFUNDED)
    assert evt.data["refund_id"] == r.id and evt.data["amount"] == 4000 and evt.data["gateway_refund_id"] == "re_g1"


def test_pending_refund_failed_by_webhook_releases_the_amount(env) -> None:
    _, store, gw, _ = env
    p = captured_payment(env)
    gw.refund_status = RefundStatus.PENDING
    r = refund(env, p.id)
    assert store.payments[p.id].refunded_amount == 10_000
    deliver(env, "evt_f", "refund.failed", {"refund": {"id": "re_g1", "status": "failed", "failure_reason": "x"}},
            r.id, "re_g1", gateway="razorpay")
    apply(env)
    assert store.refunds[r.id].status == "FAILED" and store.refunds[r.id].failure_reason == "x"
    assert store.payments[p.id].refunded_amount == 0
    assert events(store, EventType.PAYMENT_REFUNDED) == []
    # A late success event for the failed refund cannot bring it back.
    deliver(env, "evt_s", "refund.processed", {"refund": {"id": "re_g1", "status": "succeeded"}}, r.id, "re_g1")
    apply(env)
    assert store.refunds[r.id].status == "FAILED" and events(store, EventType.PAYMENT_REFUNDED) == []
    assert store.payments[p.id].refunded_amount == 0


def test_pending_refund_is_polled_by_the_worker(env) -> None:
    _, store, gw, clock = env
    p = captured_payment(env)
    gw.refund_status = RefundStatus.PENDING
    r = refund(env, p.id, 500)
    assert r.next_attempt_at == clock.t + timedelta(seconds=60)
    clock.advance(seconds=120)
    assert retry_refunds(env) == SweepReport(claimed=1)  # still pending there
    polled = store.refunds[r.id]
    assert polled.status == "PENDING" and polled.claimed_until is None and polled.attempts == 0
    assert polled.next_attempt_at == clock.t + timedelta(seconds=60)  # asked again only after another minute
    assert retry_refunds(env) == SweepReport()
    gw.refund_state["re_g1"] = RefundResult("re_g1", RefundStatus.SUCCEEDED, 500)
    clock.advance(seconds=61)
    assert retry_refunds(env).finished == 1
    assert store.refunds[r.id].status == "SUCCEEDED" and len(events(store, EventType.PAYMENT_REFUNDED)) == 1
    assert len(gw.refund_calls) == 1  # asked about, never sent again


def test_refused_refund_fails_and_releases_the_amount(env) -> None:
    _, store, gw, _ = env
    p = captured_payment(env)
    gw.refund_error = GatewayError("Refund amount is greater than unrefunded amount", code="refund_exceeds_captured")
    r = refund(env, p.id, 9000)
    assert r.status == "FAILED" and "refund_exceeds_captured" in r.failure_reason
    assert store.payments[p.id].refunded_amount == 0 and events(store, EventType.PAYMENT_REFUNDED) == []
    gw.refund_error = None
    assert refund(env, p.id).amount == 10_000


def test_a_failed_late_success_refund_does_not_give_back_what_the_customer_refunded(env) -> None:
    _, store, gw, clock = env
    p = captured_payment(env, token="pm_card_threeDSecure2Required")
    charge = {"status": "succeeded", "id": p.gateway_payment_id, "reference": p.id}
    deliver(env, "evt_a", "payment_intent.succeeded", {"charge": charge}, p.id, p.gateway_payment_id)
    apply(env)
    assert store.payments[p.id].status == "CAPTURED"
    assert refund(env, p.id).amount == 10_000  # the customer's money, all refunded
    # A second attempt on the same order was captured too; giving it back fails at the gateway.
    other = {"status": "succeeded", "id": "pi_other", "reference": p.id}
    deliver(env, "evt_b", "payment_intent.succeeded", {"charge": other}, p.id, "pi_other")
    apply(env)
    (late,) = [r for r in store.refunds.values() if r.gateway_payment_id == "pi_other"]
    gw.refund_status = RefundStatus.FAILED
    assert retry_refunds(env).finished == 1 and store.refunds[late.id].status == "FAILED"
    # That refund reserved nothing on the payment: it must not release the customer's refund.
    assert store.payments[p.id].refunded_amount == 10_000
    with pytest.raises(RefundExceedsCaptured):
        refund(env, p.id)


def test_refund_event_for_an_unknown_refund_is_retried(env) -> None:
    _, store, _, _ = env
    deliver(env, "evt_u", "refund.updated", {"refund": {"id": "re_zzz", "status": "succeeded"}}, "re_nobody",
            "re_zzz")
    apply(env)
    (inbox,) = store.inbox.values()
    assert inbox.status == "RETRY" and "no refund" in inbox.last_error


# --- withdrawals: validation --------------------------------------------------------------------

BANK = {"name": "A Kumar", "account_number": ACCOUNT, "ifsc": "HDFC0000123"}
UPI = {"name": "A Kumar", "vpa": "a.kumar@okhdfc"}


@pytest.mark.parametrize(
    ("mode", "beneficiary", "amount", "currency", "fields"),
    [
        ("IMPS", BANK, 100_000, "INR", []),
        ("NEFT", BANK, 10**9, "INR", []),
        ("UPI", UPI, 100_000, "INR", []),
        ("IMPS", BANK, 100_000, "USD", ["currency"]),
        ("RTGS", BANK, 100_000, "INR", ["mode"]),
        ("IMPS", BANK, 99, "INR", ["amount"]),
        ("IMPS", BANK, 5_00_000_01, "INR", ["amount"]),
        ("UPI", UPI, 1_00_000_01, "INR", ["amount"]),
        ("IMPS", {**BANK, "ifsc": "HDFC1000123"}, 100_000, "INR", ["beneficiary.ifsc"]),
        ("IMPS", {**BANK, "ifsc": "hdfc0000123"}, 100_000, "INR", ["beneficiary.ifsc"]),
        ("IMPS", {**BANK, "ifsc": "HDFC000012"}, 100_000, "INR", ["beneficiary.ifsc"]),
        ("NEFT", {**BANK, "account_number": "12345678"}, 100_000, "INR", ["beneficiary.account_number"]),
        ("NEFT", {**BANK, "account_number": "1" * 19}, 100_000, "INR", ["beneficiary.account_number"]),
        ("NEFT", {**BANK, "account_number": "12345-6789"}, 100_000, "INR", ["beneficiary.account_number"]),
        ("NEFT", {"name": "A Kumar", "ifsc": "HDFC0000123"}, 100_000, "INR", ["beneficiary.account_number"]),
        ("NEFT", {"name": "A Kumar", "account_number": ACCOUNT}, 100_000, "INR", ["beneficiary.ifsc"]),
        ("IMPS", {**BANK, "name": "AK"}, 100_000, "INR", ["beneficiary.name"]),
        ("IMPS", {**BANK, "name": "A" * 101}, 100_000, "INR", ["beneficiary.name"]),
        ("IMPS", UPI, 100_000, "INR", ["beneficiary.account_number", "beneficiary.ifsc", "beneficiary.vpa"]),
        ("UPI", BANK, 100_000, "INR", ["beneficiary.vpa", "beneficiary.account_number", "beneficiary.ifsc"]),
        ("UPI", {**UPI, "vpa": "nobank"}, 100_000, "INR", ["beneficiary.vpa"]),
        ("UPI", {**UPI, "vpa": "a@b"}, 100_000, "INR", ["beneficiary.vpa"]),
        ("UPI", {**UPI, "vpa": "a kumar@okhdfc"}, 100_000, "INR", ["beneficiary.vpa"]),
        ("UPI", {**UPI, "vpa": "ak@ok1hdfc"}, 100_000, "INR", ["beneficiary.vpa"]),
    ],
)
def test_withdrawal_validation(env, mode, beneficiary, amount, currency, fields) -> None:
    uow_factory, store, gw, clock = env
    cmd = withdrawals.RequestWithdrawal("u_1", amount, currency, mode, Beneficiary(**beneficiary))
    if not fields:
        flow = withdrawals.WithdrawalFlow(cmd, gw, W_SETTINGS)
        assert run_flow(flow, uow_factory, now=clock).status == "PROCESSING"
        return
    with pytest.raises(ValidationFailed) as exc:
        withdrawals.WithdrawalFlow(cmd, gw, W_SETTINGS)
    assert [e["field"] for e in exc.value.errors] == fields
    assert ACCOUNT not in json.dumps(exc.value.errors) + exc.value.detail
    assert store.withdrawals == {} and store.idem == {} and gw.payout_calls == []


# --- withdrawals: flow and state machine ---------------------------------------------------------


def withdraw(env, mode: str = "IMPS", beneficiary: dict | None = None, amount: int = 100_000,
             key: str | None = None):
    """POST /withdrawals with Idempotency-Key `key` (a new one if None); the withdrawal as stored."""
    uow_factory, _, gw, clock = env
    b = Beneficiary(**(beneficiary or (UPI if mode == "UPI" else BANK)))
    cmd = withdrawals.RequestWithdrawal("u_1", amount, "INR", mode, b)
    flow = withdrawals.WithdrawalFlow(cmd, gw, W_SETTINGS)
    return run_flow(flow, uow_factory, key=key, now=clock)


def payout_event(env, event_id: str, w, status: str, **extra) -> None:
    payload = {"payout": {"id": w.gateway_payout_id or "pout_1", "status": status, **extra}}
    deliver(env, event_id, f"payout.{status}", payload, w.id, w.gateway_payout_id, gateway="razorpay")


def wd_events(store) -> list[str]:
    return [e.type.value for e in store.outbox if e.type.value.startswith("WITHDRAWAL_")]


def assert_no_account_number(store) -> None:
    text = json.dumps([vars(w) for w in store.withdrawals.values()], default=str)
    text += json.dumps([e.to_cloudevent() for e in store.outbox], default=str)
    text += json.dumps([vars(e) for e in store.inbox.values()], default=str)
    text += json.dumps([vars(k) for k in store.idem.values()], default=str)
    assert ACCOUNT not in text


def test_bank_withdrawal_stores_only_the_last_four_digits(env) -> None:
    _, store, gw, clock = env
    w = withdraw(env)
    assert w.status == "PROCESSING" and w.gateway_payout_id == "pout_1" and w.fund_account_ref == "fa_pout_1"
    assert w.account_last4 == "9012" and w.ifsc == "HDFC0000123" and w.vpa is None
    assert w.beneficiary_summary() == {"name": "A Kumar", "account_last4": "9012"}
    assert w.claimed_until is None and w.next_attempt_at == clock.t + timedelta(seconds=300)  # the poll's turn
    (call,) = gw.payout_calls
    # The full number went to the adapter, in memory, and nowhere else.
    assert call.beneficiary.account_number == ACCOUNT and ACCOUNT not in repr(call)
    assert call.idempotency_key == f"{w.id}:payout" and call.reference == w.id and call.mode == "IMPS"
    assert_no_account_number(store)


def test_upi_withdrawal_keeps_the_vpa(env) -> None:
    w = withdraw(env, "UPI")
    assert w.vpa == "a.kumar@okhdfc" and w.account_last4 is None and w.ifsc is None
    assert w.beneficiary_summary() == {"name": "A Kumar", "vpa": "a.kumar@okhdfc"}


def test_a_withdrawal_settled_at_once_is_two_transactions(env) -> None:
    _, store, gw, _ = env
    gw.payout_status = PayoutStatus.SETTLED
    w = withdraw(env)
    # The answer skipped PROCESSING: the walk goes through it, and only settling emits an event.
    assert w.status == "SETTLED" and w.utr == "UTRpout_1" and store.commits == 2
    assert wd_events(store) == ["WITHDRAWAL_SETTLED"]


def test_settled_then_reversed_by_webhooks_duplicates_harmless(env) -> None:
    _, store, _, _ = env
    w = withdraw(env)
    payout_event(env, "evt_q", w, "queued")
    for _ in range(3):
        payout_event(env, "evt_p", w, "processed", utr="UTR123")
    payout_event(env, "evt_p_again", w, "processed", utr="UTR123")  # the same news under another event id
    apply(env)
    got = store.withdrawals[w.id]
    assert got.status == "SETTLED" and got.utr == "UTR123"
    assert inbox_statuses(store) == ["IGNORED", "APPLIED", "IGNORED"]
    payout_event(env, "evt_r", w, "reversed", failure_reason="beneficiary account closed")
    payout_event(env, "evt_f_late", w, "failed")  # a failure after settlement changes nothing
    apply(env)
    got = store.withdrawals[w.id]
    assert got.status == "REVERSED" and got.failure_reason == "beneficiary account closed" and got.utr == "UTR123"
    assert wd_events(store) == ["WITHDRAWAL_SETTLED", "WITHDRAWAL_REVERSED"]
    settled = store.outbox[0]
    assert settled.subject == w.id and settled.user_id == "u_1"
    assert settled.data["utr"] == "UTR123" and settled.data["beneficiary"] == {"name": "A Kumar",
                                                                                 "account_last4": "9012"}
    for e in store.outbox:
        serialize_event(e)
    assert_no_account_number(store)


def test_reversed_before_processed_settles_then_reverses_once(env) -> None:
    _, store, _, _ = env
    w = withdraw(env)
    payout_event(env, "evt_r", w, "reversed", utr="UTR9", failure_reason="returned")
    payout_event(env, "evt_p", w, "processed", utr="UTR9")
    apply(env)
    got = store.withdrawals[w.id]
    assert got.status == "REVERSED" and got.utr == "UTR9" and got.failure_reason == "returned"
    assert inbox_statuses(store) == ["APPLIED", "IGNORED"]
    assert wd_events(store) == ["WITHDRAWAL_SETTLED", "WITHDRAWAL_REVERSED"]


@pytest.mark.parametrize("status", ["failed", "rejected", "cancelled"])
def test_failed_payout_fails_the_withdrawal_once(env, status) -> None:
    _, store, gw, _ = env
    w = withdraw(env)
    payout_event(env, f"evt_{status}", w, status, failure_reason=f"bank said {status}")
    payout_event(env, "evt_p", w, "processed", utr="UTR1")
    apply(env)
    got = store.withdrawals[w.id]
    assert got.status == "FAILED" and got.failure_reason == f"bank said {status}" and got.utr is None
    assert wd_events(store) == ["WITHDRAWAL_FAILED"]
    assert store.outbox[0].data["failure_reason"] == f"bank said {status}"


def test_processed_webhook_before_the_creation_answer_was_applied(env) -> None:
    _, store, gw, _ = env
    gw.payout_lost_response = True
    with pytest.raises(GatewayUnavailable):
        withdraw(env)
    (w,) = store.withdrawals.values()
    assert w.status == "REQUESTED" and w.gateway_payout_id is None
    deliver(env, "evt_p", "payout.processed", {"payout": {"id": "pout_1", "status": "processed", "utr": "U1"}},
            w.id, "pout_1", gateway="razorpay")
    apply(env)
    got = store.withdrawals[w.id]
    assert got.status == "SETTLED" and got.gateway_payout_id == "pout_1" and got.utr == "U1"
    assert wd_events(store) == ["WITHDRAWAL_SETTLED"]


def test_refused_payout_fails_at_once_with_a_masked_reason(env) -> None:
    _, store, gw, _ = env
    gw.payout_error = GatewayError(f"razorpay refused the beneficiary {ACCOUNT}", code="invalid_beneficiary",
                                   http_status=400)
    w = withdraw(env)
    assert w.status == "FAILED" and w.failure_reason.startswith("invalid_beneficiary")
    assert ACCOUNT not in w.failure_reason and "9012" in w.failure_reason
    assert wd_events(store) == ["WITHDRAWAL_FAILED"]
    assert_no_account_number(store)


def test_gateway_down_then_the_same_request_resumes_with_the_same_key(env) -> None:
    _, store, gw, clock = env
    gw.payout_unavailable = True
    with pytest.raises(GatewayUnavailable, match="is REQUESTED"):
        withdraw(env, key="wk")
    (pending,) = store.withdrawals.values()
    wid = pending.id
    assert pending.status == "REQUESTED" and pending.claimed_until is None and pending.attempts == 1
    assert pending.next_attempt_at == clock.t + timedelta(seconds=60)
    gw.payout_unavailable = False
    w = withdraw(env, key="wk")
    assert w.id == wid and w.status == "PROCESSING"
    assert {c.idempotency_key for c in gw.payout_calls} == {f"{wid}:payout"}
    assert withdraw(env, key="wk").status == "PROCESSING" and len(gw.payout_calls) == 2  # replayed: no third call
    assert_no_account_number(store)


def test_poll_sweep_settles_a_payout_whose_webhook_never_came(env) -> None:
    _, store, gw, clock = env
    w = withdraw(env)
    clock.advance(seconds=301)
    assert resolve(env) == SweepReport(claimed=1)  # still processing at the bank
    polled = store.withdrawals[w.id]
    assert polled.claimed_until is None and polled.next_attempt_at == clock.t + timedelta(seconds=300)
    gw.move_payout(w.gateway_payout_id, PayoutStatus.SETTLED, utr="UTRPOLL")
    assert resolve(env) == SweepReport()  # asked a moment ago: not due
    clock.advance(seconds=301)
    assert resolve(env) == SweepReport(claimed=1, finished=1)
    assert store.withdrawals[w.id].status == "SETTLED" and store.withdrawals[w.id].utr == "UTRPOLL"
    payout_event(env, "evt_p", store.withdrawals[w.id], "processed", utr="UTRPOLL")  # the late webhook
    apply(env)
    assert wd_events(store) == ["WITHDRAWAL_SETTLED"]


def test_sweep_finds_a_payout_whose_answer_was_lost(env) -> None:
    _, store, gw, clock = env
    gw.payout_lost_response = True
    with pytest.raises(GatewayUnavailable):
        withdraw(env)
    gw.payout_lost_response = False
    assert resolve(env) == SweepReport()  # too fresh
    clock.advance(seconds=61)
    assert resolve(env) == SweepReport(claimed=1)  # still open (PROCESSING) afterwards
    (w,) = store.withdrawals.values()
    assert w.status == "PROCESSING" and w.gateway_payout_id == "pout_1" and len(gw.payout_calls) == 1
    assert w.next_attempt_at == clock.t + timedelta(seconds=300) and w.claimed_until is None


def test_sweep_sends_a_upi_payout_again(env) -> None:
    _, store, gw, clock = env
    gw.payout_unavailable = True
    with pytest.raises(GatewayUnavailable):
        withdraw(env, "UPI")
    gw.payout_unavailable = False
    clock.advance(seconds=61)
    assert resolve(env) == SweepReport(claimed=1)
    (w,) = store.withdrawals.values()
    assert w.status == "PROCESSING"
    assert gw.payout_calls[-1].beneficiary.vpa == "a.kumar@okhdfc"
    assert gw.payout_calls[-1].idempotency_key == f"{w.id}:payout"


def test_sweep_gives_up_on_a_bank_payout_the_gateway_never_saw(env) -> None:
    _, store, gw, clock = env
    gw.payout_unavailable = True
    with pytest.raises(GatewayUnavailable):
        withdraw(env)
    gw.payout_unavailable = False
    clock.advance(seconds=600)
    assert resolve(env) == SweepReport(claimed=1)
    (w,) = store.withdrawals.values()
    assert w.status == "REQUESTED" and len(gw.payout_calls) == 1  # no account number: nothing to resend
    assert w.next_attempt_at == clock.t + timedelta(seconds=60) and w.claimed_until is None
    clock.advance(seconds=3600)
    assert resolve(env) == SweepReport(claimed=1, finished=1)
    w = store.withdrawals[w.id]
    assert w.status == "FAILED" and w.failure_reason == withdrawals.NOT_CREATED_REASON
    assert wd_events(store) == ["WITHDRAWAL_FAILED"]


def test_give_up_does_not_fail_a_withdrawal_a_client_is_sending_now(env) -> None:
    _, store, gw, clock = env
    gw.payout_unavailable = True
    with pytest.raises(GatewayUnavailable):
        withdraw(env, key="wk")
    (wid,) = store.withdrawals
    clock.advance(seconds=7200)  # past give_up_after_seconds
    sweeps = during(gw, "create_payout", lambda: resolve(env))
    with pytest.raises(GatewayUnavailable):
        withdraw(env, key="wk")  # the client's retry: the gateway is still down
    assert sweeps == [SweepReport()]  # the request held the withdrawal while its call was in flight
    gw.payout_unavailable = False
    assert resolve(env) == SweepReport()  # and the retry put the next look a minute away
    assert store.withdrawals[wid].status == "REQUESTED"
    w = withdraw(env, key="wk")  # the next retry gets through, the sweep again running meanwhile
    assert w.id == wid and w.status == "PROCESSING" and sweeps == [SweepReport()] * 2
    assert wd_events(store) == []


def test_a_retry_after_the_sweep_gave_up_answers_the_failure_without_a_payout(env) -> None:
    _, store, gw, clock = env
    gw.payout_unavailable = True
    with pytest.raises(GatewayUnavailable):
        withdraw(env, key="wk")
    gw.payout_unavailable = False
    clock.advance(seconds=3601)
    assert resolve(env).finished == 1
    w = withdraw(env, key="wk")
    assert w.status == "FAILED" and w.failure_reason == withdrawals.NOT_CREATED_REASON
    assert len(gw.payout_calls) == 1 and wd_events(store) == ["WITHDRAWAL_FAILED"]


def test_payout_event_for_an_unknown_withdrawal_is_retried(env) -> None:
    _, store, _, _ = env
    deliver(env, "evt_x", "payout.processed", {"payout": {"id": "pout_x", "status": "processed"}}, "wd_nobody",
            "pout_x", gateway="razorpay")
    apply(env)
    (inbox,) = store.inbox.values()
    assert inbox.status == "RETRY" and "no withdrawal" in inbox.last_error


def test_the_applier_routes_each_kind_to_its_handler_and_ignores_the_rest(env) -> None:
    _, store, gw, _ = env
    p = captured_payment(env)
    gw.refund_status = RefundStatus.PENDING
    r = refund(env, p.id, 100)
    w = withdraw(env)
    deliver(env, "evt_r", "refund.updated", {"refund": {"id": r.gateway_refund_id, "status": "succeeded"}}, r.id,
            r.gateway_refund_id)
    payout_event(env, "evt_w", w, "processed", utr="UTR1")
    deliver(env, "evt_c", "payment_intent.succeeded", {"charge": {"status": "succeeded", "id": p.gateway_payment_id,
                                                                  "reference": p.id}}, p.id, p.gateway_payment_id)
    deliver(env, "evt_other", "customer.updated", {"customer": {"id": "cus_1"}}, None, "cus_1")
    apply(env)
    # The refund and the payout moved; the duplicate capture and a type nobody handles are recorded, nothing else.
    assert inbox_statuses(store) == ["APPLIED", "APPLIED", "IGNORED", "IGNORED"]
    assert store.refunds[r.id].status == "SUCCEEDED" and store.withdrawals[w.id].status == "SETTLED"
    assert store.payments[p.id].status == "CAPTURED" and len(events(store, EventType.PAYMENT_CAPTURED)) == 1
