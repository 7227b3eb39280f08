"""The webhook applier and the payment sweeps (expire_pending_3ds, reconcile_pending) against fakes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from payment_service.domain import ids
from payment_service.domain.errors import GatewayUnavailable
from payment_service.domain.events import EventType
from payment_service.gateways.base import ChargeRequest, ChargeResult, ChargeStatus, WebhookEvent
from payment_service.services import jobs, refunds, webhooks
from payment_service.services import payments as svc
from payment_service.services.lifecycle import SweepReport
from payment_service.services.risk import RiskRules

from .fakes import Clock, FakeGateway, fake_uow_factory, run_flow

SETTINGS = svc.PaymentSettings(RiskRules(), 900)
APPLY = webhooks.ApplySettings(SETTINGS)


@pytest.fixture
def env():
    uow_factory, store = fake_uow_factory()
    return uow_factory, store, FakeGateway(), Clock()


def topup(env, token: str = "pm_card_visa", amount: int = 5000, key: str | None = None) -> svc.Payment:
    uow_factory, _, gw, clock = env
    cmd = svc.TopUp(user_id="u_1", amount=amount, currency="INR", gateway="stripe", token=token)
    return run_flow(svc.TopUpFlow(cmd, {"stripe": gw}, SETTINGS), uow_factory, key=key, now=clock)


def start_3ds(env) -> svc.Payment:
    return topup(env, token="pm_card_threeDSecure2Required")


def deliver(env, event_id: str, status: str, gateway_id: str | None, reference: str | None) -> bool:
    uow_factory, _, _, clock = env
    payload = {"charge": {"status": status, "id": gateway_id, "reference": reference}}
    return webhooks.store_webhook(WebhookEvent("stripe", event_id, "payment_intent." + status, gateway_id,
                                               reference, payload), uow_factory, now=clock)


def apply(env) -> int:
    uow_factory, _, gw, clock = env
    return webhooks.apply_due_events(uow_factory, {"stripe": gw}, APPLY, now=clock)


def expire(env) -> SweepReport:
    uow_factory, _, gw, clock = env
    return jobs.expire_pending_3ds(uow_factory, {"stripe": gw}, SETTINGS, now=clock)


def reconcile(env, settings: svc.PaymentSettings = SETTINGS) -> SweepReport:
    uow_factory, _, gw, clock = env
    return jobs.reconcile_pending(uow_factory, {"stripe": gw}, settings, now=clock)


def retry_refunds(env) -> SweepReport:
    uow_factory, _, gw, clock = env
    return refunds.retry_pending_refunds(uow_factory, {"stripe": gw}, refunds.RefundSettings(), now=clock)


def captured(store) -> list:
    return [e for e in store.outbox if e.type == EventType.PAYMENT_CAPTURED]


def unanswered_topup(env, charged_anyway: bool = False) -> str:
    """A top-up answered 503: the gateway did not answer (and, if `charged_anyway`, charged all the same)."""
    _, store, gw, _ = env
    gw.unavailable = True
    with pytest.raises(GatewayUnavailable, match="did not answer"):
        topup(env, amount=10, key="k1")
    gw.unavailable = False
    (pid,) = store.payments
    if charged_anyway:
        gw.charge(ChargeRequest(reference=pid, amount=10, currency="INR", idempotency_key=f"{pid}:charge",
                                token="pm_card_visa"))
    return pid


# --- webhooks -------------------------------------------------------------------------------------


def test_3ds_success_webhook_captures_once_even_delivered_ten_times(env) -> None:
    _, store, gw, _ = env
    p = start_3ds(env)
    assert deliver(env, "evt_1", "succeeded", p.gateway_payment_id, p.id)
    for _ in range(9):
        assert not deliver(env, "evt_1", "succeeded", p.gateway_payment_id, p.id)
    assert apply(env) == 1 and apply(env) == 0
    assert store.payments[p.id].status == "CAPTURED" and len(captured(store)) == 1
    assert [e.status for e in store.inbox.values()] == ["APPLIED"]


def test_reordered_failure_then_success_fails_once_and_refunds_the_late_success(env) -> None:
    _, store, gw, _ = env
    p = start_3ds(env)
    deliver(env, "evt_f", "failed", p.gateway_payment_id, p.id)
    deliver(env, "evt_s", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    # The failure came first and won; the success that followed cannot move a final payment: its money
    # goes back by a refund recorded on the payment, which the refund sweep sends.
    after = store.payments[p.id]
    assert after.status == "FAILED" and after.failure_code == "failed_then_refunded"
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_FAILED]
    assert [e.status for e in store.inbox.values()] == ["APPLIED", "APPLIED"]
    (r,) = store.refunds.values()
    assert r.status == "PENDING" and r.reason == "failed_then_refunded" and r.amount == 5000
    assert r.gateway_payment_id == p.gateway_payment_id
    assert gw.refunds == {}  # not sent inside the webhook's transaction
    report = retry_refunds(env)
    assert report.finished == 1 and store.refunds[r.id].status == "SUCCEEDED" and len(gw.refunds) == 1
    # It never credited the wallet, so its refund does not debit it.
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_FAILED]


def test_a_success_webhook_applied_while_the_request_is_in_flight_captures_once(env) -> None:
    _, store, gw, _ = env
    charge = gw.charge

    def charge_and_notify(request):
        result = charge(request)
        deliver(env, "evt_fast", "succeeded", result.gateway_payment_id, request.reference)
        assert apply(env) == 1  # the worker is quicker than the request's own commit
        return result

    gw.charge = charge_and_notify
    p = topup(env)
    assert p.status == "CAPTURED" and p.claimed_until is None and len(captured(store)) == 1
    assert [e.status for e in store.inbox.values()] == ["APPLIED"] and store.refunds == {}


def test_a_superseded_attempts_failure_does_not_fail_the_payment(env) -> None:
    _, store, _, _ = env
    p = start_3ds(env)
    deliver(env, "evt_old_f", "failed", "pi_old_attempt", p.id)
    apply(env)
    assert store.payments[p.id].status == "PENDING_3DS"
    assert [e.status for e in store.inbox.values()] == ["IGNORED"]
    deliver(env, "evt_s", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    assert store.payments[p.id].status == "CAPTURED" and len(captured(store)) == 1


def test_a_capture_by_another_attempt_is_the_payments_capture(env) -> None:
    """Razorpay: the customer completes a second attempt on the same order while we hold the first."""
    _, store, _, _ = env
    p = start_3ds(env)
    assert p.gateway_payment_id == "pi_1"
    deliver(env, "evt_b", "succeeded", "pi_2", p.id)
    apply(env)
    after = store.payments[p.id]
    assert after.status == "CAPTURED" and len(captured(store)) == 1
    # The money is at pi_2: refunds of this payment, and the late-success check, must go by it.
    assert after.gateway_payment_id == "pi_2"
    # The first attempt succeeds after all: a second capture, never credited, is given back.
    deliver(env, "evt_a", "succeeded", "pi_1", p.id)
    apply(env)
    assert [(r.gateway_payment_id, r.status) for r in store.refunds.values()] == [("pi_1", "PENDING")]
    assert len(captured(store)) == 1


def test_a_success_of_another_attempt_on_a_captured_payment_is_refunded_without_debiting_the_wallet(env) -> None:
    _, store, gw, _ = env
    p = start_3ds(env)
    deliver(env, "evt_a", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    deliver(env, "evt_b", "succeeded", "pi_other", p.id)
    deliver(env, "evt_b2", "succeeded", "pi_other", p.id)  # the same success, delivered twice
    apply(env)
    after = store.payments[p.id]
    assert after.status == "CAPTURED" and after.gateway_payment_id == p.gateway_payment_id
    assert after.refunded_amount == 0  # the customer's own capture is still theirs to refund
    (r,) = store.refunds.values()
    assert r.status == "PENDING" and r.gateway_payment_id == "pi_other" and r.amount == 5000
    assert retry_refunds(env).finished == 1 and store.refunds[r.id].status == "SUCCEEDED"
    assert len(gw.refunds) == 1 and len(captured(store)) == 1
    # The wallet was credited once, for the first attempt; giving the second one back must not debit it.
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_CAPTURED]


def test_unknown_object_is_kept_and_retried_with_backoff(env) -> None:
    _, store, _, clock = env
    deliver(env, "evt_x", "succeeded", "pi_unknown", "pay_unknown")
    apply(env)
    (e,) = store.inbox.values()
    assert e.status == "RETRY" and e.attempts == 1 and "no payment" in e.last_error
    assert apply(env) == 0  # not due yet
    clock.advance(seconds=3)
    apply(env)
    assert e.attempts == 2 and e.status == "RETRY"
    for _ in range(webhooks.MAX_ATTEMPTS):
        clock.advance(seconds=601)
        apply(env)
    assert e.status == "FAILED" and e.id in store.inbox  # given up on, but kept


def test_event_for_a_payment_recorded_later_applies_on_retry(env, monkeypatch) -> None:
    _, store, _, clock = env
    pid = ids.new_id("pay")
    deliver(env, "evt_early", "succeeded", "pi_1", pid)
    apply(env)
    assert [e.status for e in store.inbox.values()] == ["RETRY"]
    monkeypatch.setattr(ids, "new_id", lambda prefix: pid)  # the id the request allocates
    assert start_3ds(env).id == pid
    clock.advance(seconds=5)
    apply(env)
    assert store.payments[pid].status == "CAPTURED" and len(captured(store)) == 1
    assert [e.status for e in store.inbox.values()] == ["APPLIED"]


def test_an_event_with_only_the_gateway_id_finds_the_payment(env) -> None:
    _, store, _, _ = env
    p = start_3ds(env)
    deliver(env, "evt_1", "succeeded", p.gateway_payment_id, None)
    apply(env)
    assert store.payments[p.id].status == "CAPTURED" and len(captured(store)) == 1


# --- the 3-D Secure expiry sweep ------------------------------------------------------------------


def test_expiry_cancels_then_expires_with_event(env) -> None:
    _, store, gw, clock = env
    p = start_3ds(env)
    assert expire(env) == SweepReport()  # not due
    clock.advance(seconds=901)
    assert expire(env) == SweepReport(claimed=1, finished=1)
    after = store.payments[p.id]
    assert after.status == "EXPIRED" and after.failure_code == "expired" and after.claimed_until is None
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_EXPIRED]
    assert gw.state[p.gateway_payment_id].status is ChargeStatus.CANCELED


def test_expiry_whose_cancel_webhook_lands_first_still_expires(env) -> None:
    # The sweep cancels at the gateway; the gateway's payment_intent.canceled webhook can reach the
    # applier before the sweep records the expiry (CI met it: the payment ended FAILED, published as
    # PAYMENT_FAILED). A cancel of a 3-D Secure payment past its deadline is that expiry, whoever lands it.
    _, store, gw, clock = env
    p = start_3ds(env)
    cancel = gw.cancel_charge

    def cancel_then_webhook(gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        result = cancel(gateway_payment_id, idempotency_key=idempotency_key)
        deliver(env, "evt_canceled", "canceled", gateway_payment_id, p.id)
        assert apply(env) == 1
        return result

    gw.cancel_charge = cancel_then_webhook
    clock.advance(seconds=901)
    assert expire(env) == SweepReport(claimed=1, finished=1)
    after = store.payments[p.id]
    assert after.status == "EXPIRED" and after.failure_code == "expired"
    assert after.failure_message == "3-D Secure was not completed in time"
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_EXPIRED]
    assert [e.status for e in store.inbox.values()] == ["APPLIED"]
    # One audit row, naming who landed it: the gateway's event here (the sweep then moved nothing).
    rows = [(r.actor, r.request_id) for r in store.audit if r.resource_id == p.id and r.action == "payment.expired"]
    assert rows == [("gateway:stripe", "evt_canceled")]


def test_a_cancel_before_the_deadline_fails_the_payment(env) -> None:
    # Canceled elsewhere (the Dashboard) while the customer still had time: not an expiry.
    _, store, gw, clock = env
    p = start_3ds(env)
    gw.cancel_charge(p.gateway_payment_id, idempotency_key="dashboard")
    deliver(env, "evt_canceled", "canceled", p.gateway_payment_id, p.id)
    apply(env)
    assert store.payments[p.id].status == "FAILED"
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_FAILED]


def test_expiry_race_gateway_succeeded_so_captured(env) -> None:
    _, store, gw, clock = env
    p = start_3ds(env)
    gw.state[p.gateway_payment_id] = ChargeResult(ChargeStatus.SUCCEEDED, p.gateway_payment_id, reference=p.id)
    clock.advance(seconds=901)
    assert expire(env).finished == 1
    assert store.payments[p.id].status == "CAPTURED" and len(captured(store)) == 1
    # And the success webhook that follows changes nothing.
    deliver(env, "evt_late", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    assert len(captured(store)) == 1 and store.refunds == {}


def test_expiry_waits_while_gateway_is_down_and_records_the_attempt(env) -> None:
    _, store, gw, clock = env
    p = start_3ds(env)
    clock.advance(seconds=901)
    gw.unavailable = True
    assert expire(env) == SweepReport(claimed=1, failed=1)
    after = store.payments[p.id]
    assert after.status == "PENDING_3DS" and after.attempts == 1 and after.claimed_until is None
    assert after.next_attempt_at == clock.t + timedelta(seconds=15) and "GatewayUnavailableError" in after.last_error
    gw.unavailable = False
    assert expire(env) == SweepReport()  # backing off
    clock.advance(seconds=15)
    assert expire(env).finished == 1 and store.payments[p.id].status == "EXPIRED"


def test_late_success_on_expired_payment_is_recorded_and_refunded_by_the_sweep(env) -> None:
    _, store, gw, clock = env
    p = start_3ds(env)
    clock.advance(seconds=901)
    expire(env)
    deliver(env, "evt_ok", "succeeded", p.gateway_payment_id, p.id)
    deliver(env, "evt_ok2", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    after = store.payments[p.id]
    assert after.status == "EXPIRED" and after.failure_code == "expired_then_refunded"
    assert after.refunded_amount == 5000
    assert [e.status for e in store.inbox.values()] == ["APPLIED", "IGNORED"]
    (r,) = store.refunds.values()  # one refund, however often the success is delivered
    assert r.status == "PENDING" and r.reason == "expired_then_refunded" and r.next_attempt_at == clock.t
    assert gw.refunds == {}
    assert retry_refunds(env) == SweepReport(claimed=1, finished=1)
    assert store.refunds[r.id].status == "SUCCEEDED" and len(gw.refunds) == 1
    assert captured(store) == [] and [e.type for e in store.outbox] == [EventType.PAYMENT_EXPIRED]


def test_a_late_success_refund_is_retried_until_it_succeeds(env) -> None:
    _, store, gw, clock = env
    p = start_3ds(env)
    clock.advance(seconds=901)
    expire(env)
    deliver(env, "evt_ok", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    (rid,) = store.refunds
    gw.unavailable = True
    assert retry_refunds(env) == SweepReport(claimed=1, failed=1)
    r = store.refunds[rid]
    assert r.status == "PENDING" and r.attempts == 1 and r.next_attempt_at == clock.t + timedelta(seconds=15)
    clock.advance(seconds=15)
    assert retry_refunds(env).failed == 1 and store.refunds[rid].attempts == 2
    gw.unavailable = False
    clock.advance(seconds=30)
    assert retry_refunds(env).finished == 1 and store.refunds[rid].status == "SUCCEEDED" and len(gw.refunds) == 1


# --- the reconcile sweep --------------------------------------------------------------------------


def test_reconcile_captures_a_charge_whose_commit_was_lost(env) -> None:
    _, store, gw, clock = env
    pid = unanswered_topup(env, charged_anyway=True)
    assert reconcile(env) == SweepReport()  # too young
    clock.advance(seconds=181)
    assert reconcile(env) == SweepReport(claimed=1, finished=1)
    after = store.payments[pid]
    assert after.status == "CAPTURED" and after.claimed_until is None and len(captured(store)) == 1
    assert len(gw.charges) == 1  # the replay with the same key returned the first charge


def test_reconcile_replays_a_charge_the_gateway_never_saw_within_the_window(env) -> None:
    _, store, gw, clock = env
    pid = unanswered_topup(env)
    assert gw.charges == {}  # the gateway never saw it (or its search has not caught up)
    clock.advance(seconds=181)
    assert reconcile(env).finished == 1
    # Not "not_submitted": the charge is replayed with the same key, and made once.
    assert store.payments[pid].status == "CAPTURED" and len(captured(store)) == 1
    assert [c.idempotency_key for c in gw.calls] == [f"{pid}:charge"] * 2 and len(gw.charges) == 1


def test_reconcile_fails_a_charge_the_gateway_never_saw_past_the_window(env) -> None:
    _, store, gw, clock = env
    pid = unanswered_topup(env)
    clock.advance(seconds=SETTINGS.replay_window_seconds + 1)
    assert reconcile(env).finished == 1
    after = store.payments[pid]
    assert after.status == "FAILED" and after.failure_code == "not_submitted"
    assert len(gw.calls) == 1 and gw.charges == {}  # no replay past the window
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_FAILED]


def test_reconcile_skips_a_payment_whose_resumed_request_is_charging(env) -> None:
    _, store, gw, clock = env
    pid = unanswered_topup(env)
    clock.advance(seconds=181)  # due for the sweep
    reports: list[SweepReport] = []
    charge = gw.charge

    def charge_while_the_sweep_runs(request):
        reports.append(reconcile(env))
        return charge(request)

    gw.charge = charge_while_the_sweep_runs
    p = topup(env, amount=10, key="k1")  # the client's retry with the same key
    assert reports == [SweepReport()]  # the request holds the payment: the sweep did not look at it
    assert p.id == pid and p.status == "CAPTURED" and len(captured(store)) == 1 and len(gw.charges) == 1


def test_reconcile_while_the_gateway_is_down_backs_off_without_stopping(env) -> None:
    _, store, gw, clock = env
    first = unanswered_topup(env)
    clock.advance(seconds=1)
    topup(env, amount=10, key="k2")  # a second payment: captured, not swept
    gw.unavailable = True
    clock.advance(seconds=181)
    assert reconcile(env) == SweepReport(claimed=1, failed=1)
    after = store.payments[first]
    assert after.status == "PENDING" and after.attempts == 2 and after.claimed_until is None  # 503, then the sweep
    assert after.next_attempt_at == clock.t + timedelta(seconds=30) and "GatewayUnavailableError" in after.last_error
    gw.unavailable = False
    clock.advance(seconds=30)
    assert reconcile(env).finished == 1 and store.payments[first].status == "CAPTURED"


def test_reconcile_of_a_charge_still_processing_looks_again_later(env) -> None:
    _, store, gw, clock = env
    pid = unanswered_topup(env, charged_anyway=True)
    (gid,) = gw.charges
    gw.results[f"{pid}:charge"] = ChargeResult(ChargeStatus.PROCESSING, gid)
    clock.advance(seconds=181)
    assert reconcile(env) == SweepReport(claimed=1)
    after = store.payments[pid]
    assert after.status == "PENDING" and after.gateway_payment_id == gid and after.claimed_until is None
    assert after.next_attempt_at == clock.t + timedelta(seconds=SETTINGS.reconcile_after_seconds)
    assert reconcile(env) == SweepReport()
    gw.state[gid] = ChargeResult(ChargeStatus.SUCCEEDED, gid, amount=10, reference=pid)
    clock.advance(seconds=SETTINGS.reconcile_after_seconds)
    assert reconcile(env).finished == 1 and store.payments[pid].status == "CAPTURED"
