"""The webhook applier and the worker's jobs against fakes."""

from __future__ import annotations

import pytest

from payment_service.domain import ids
from payment_service.domain.events import EventType
from payment_service.gateways.base import ChargeResult, ChargeStatus, WebhookEvent
from payment_service.services import jobs, webhooks
from payment_service.services import payments as svc
from payment_service.services.risk import RiskRules

from .fakes import Clock, FakeGateway, fake_uow_factory

SETTINGS = svc.PaymentSettings(RiskRules(), 900)




@pytest.fixture
def env():
    uow_factory, store = fake_uow_factory()
    return uow_factory, store, FakeGateway(), Clock()


def start_3ds(env) -> svc.Payment:
    uow_factory, _, gw, clock = env
    cmd = svc.TopUp(user_id="u_1", amount=5000, currency="INR", payment_id=ids.new_id("pay"), gateway="stripe",
                    token="pm_card_threeDSecure2Required")
    return svc.top_up(cmd, uow_factory, {"stripe": gw}, SETTINGS, now=clock)


def deliver(env, event_id: str, status: str, gateway_id: str | None, reference: str | None) -> bool:
    uow_factory, _, _, clock = env
    payload = {"charge": {"status": status, "id": gateway_id, "reference": reference}}
    return webhooks.store_webhook(WebhookEvent("stripe", event_id, "payment_intent." + status, gateway_id,
                                               reference, payload), uow_factory, now=clock)


def apply(env) -> int:
    uow_factory, _, gw, clock = env
    return webhooks.apply_due_events(uow_factory, {"stripe": gw}, SETTINGS, now=clock)


def captured(store) -> list:
    return [e for e in store.outbox if e.type == EventType.PAYMENT_CAPTURED]


def test_3ds_success_webhook_captures_once_even_delivered_ten_times(env) -> None:
    _, store, gw, _ = env
    p = start_3ds(env)
    assert deliver(env, "evt_1", "succeeded", p.gateway_payment_id, p.id)
    for _ in range(9):
        assert not deliver(env, "evt_1", "succeeded", p.gateway_payment_id, p.id)
    assert apply(env) == 1 and apply(env) == 0
    assert store.payments[p.id].status == "CAPTURED" and len(captured(store)) == 1
    assert [e.status for e in store.inbox.values()] == ["APPLIED"]


def test_reordered_success_then_failure_one_transition(env) -> None:
    _, store, _, _ = env
    p = start_3ds(env)
    deliver(env, "evt_f", "failed", p.gateway_payment_id, p.id)
    deliver(env, "evt_s", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    # The failure came first and won; the success that followed cannot move a terminal payment.
    assert store.payments[p.id].status == "FAILED"
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_FAILED]
    assert sorted(e.status for e in store.inbox.values()) == ["APPLIED", "IGNORED"]


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


def test_event_for_a_payment_recorded_later_applies_on_retry(env) -> None:
    uow_factory, store, gw, clock = env
    pid = ids.new_id("pay")
    deliver(env, "evt_early", "succeeded", "pi_1", pid)
    apply(env)
    cmd = svc.TopUp(user_id="u_1", amount=10, currency="INR", payment_id=pid, gateway="stripe",
                    token="pm_card_threeDSecure2Required")
    svc.top_up(cmd, uow_factory, {"stripe": gw}, SETTINGS, now=clock)
    clock.advance(seconds=5)
    apply(env)
    assert store.payments[pid].status == "CAPTURED" and len(captured(store)) == 1


def test_expiry_cancels_then_expires_with_event(env) -> None:
    uow_factory, store, gw, clock = env
    p = start_3ds(env)
    assert jobs.expire_pending_3ds(uow_factory, {"stripe": gw}, SETTINGS, now=clock) == 0  # not due
    clock.advance(seconds=901)
    assert jobs.expire_pending_3ds(uow_factory, {"stripe": gw}, SETTINGS, now=clock) == 1
    assert store.payments[p.id].status == "EXPIRED"
    assert [e.type for e in store.outbox] == [EventType.PAYMENT_EXPIRED]
    assert gw.state[p.gateway_payment_id].status is ChargeStatus.CANCELED


def test_expiry_race_gateway_succeeded_so_captured(env) -> None:
    uow_factory, store, gw, clock = env
    p = start_3ds(env)
    gw.state[p.gateway_payment_id] = ChargeResult(ChargeStatus.SUCCEEDED, p.gateway_payment_id, reference=p.id)
    clock.advance(seconds=901)
    jobs.expire_pending_3ds(uow_factory, {"stripe": gw}, SETTINGS, now=clock)
    assert store.payments[p.id].status == "CAPTURED" and len(captured(store)) == 1
    # And the success webhook that follows changes nothing.
    deliver(env, "evt_late", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    assert len(captured(store)) == 1


def test_expiry_waits_while_gateway_is_down(env) -> None:
    uow_factory, store, gw, clock = env
    p = start_3ds(env)
    clock.advance(seconds=901)
    gw.unavailable = True
    jobs.expire_pending_3ds(uow_factory, {"stripe": gw}, SETTINGS, now=clock)
    assert store.payments[p.id].status == "PENDING_3DS"


def test_late_success_on_expired_payment_is_refunded_and_recorded(env) -> None:
    uow_factory, store, gw, clock = env
    p = start_3ds(env)
    clock.advance(seconds=901)
    jobs.expire_pending_3ds(uow_factory, {"stripe": gw}, SETTINGS, now=clock)
    deliver(env, "evt_ok", "succeeded", p.gateway_payment_id, p.id)
    deliver(env, "evt_ok2", "succeeded", p.gateway_payment_id, p.id)
    apply(env)
    after = store.payments[p.id]
    assert after.status == "EXPIRED" and after.failure_code == "expired_then_refunded"
    assert after.refunded_amount == 5000 and len(gw.refunds) == 1
    assert [r.reason for r in store.refunds.values()] == ["expired_then_refunded"]
    assert captured(store) == []


def test_reconcile_captures_a_charge_whose_commit_was_lost(env) -> None:
    uow_factory, store, gw, clock = env
    pid = ids.new_id("pay")
    gw.unavailable = True
    cmd = svc.TopUp(user_id="u_1", amount=10, currency="INR", payment_id=pid, gateway="stripe", token="pm_card_visa")
    with pytest.raises(Exception, match="did not answer"):
        svc.top_up(cmd, uow_factory, {"stripe": gw}, SETTINGS, now=clock)
    gw.unavailable = False
    # The gateway did charge (the response was lost): it knows the charge by our id.
    from payment_service.gateways.base import ChargeRequest

    gw.charge(ChargeRequest(reference=pid, amount=10, currency="INR", idempotency_key=f"{pid}:charge",
                            token="pm_card_visa"))
    assert jobs.reconcile_pending(uow_factory, {"stripe": gw}, SETTINGS, 180, now=clock) == 0  # too young
    clock.advance(seconds=181)
    assert jobs.reconcile_pending(uow_factory, {"stripe": gw}, SETTINGS, 180, now=clock) == 1
    assert store.payments[pid].status == "CAPTURED" and len(captured(store)) == 1


def test_reconcile_fails_a_charge_the_gateway_never_saw(env) -> None:
    uow_factory, store, gw, clock = env
    pid = ids.new_id("pay")
    gw.unavailable = True
    cmd = svc.TopUp(user_id="u_1", amount=10, currency="INR", payment_id=pid, gateway="stripe", token="pm_card_visa")
    with pytest.raises(Exception, match="did not answer"):
        svc.top_up(cmd, uow_factory, {"stripe": gw}, SETTINGS, now=clock)
    gw.unavailable = False
    clock.advance(seconds=181)
    jobs.reconcile_pending(uow_factory, {"stripe": gw}, SETTINGS, 180, now=clock)
    assert store.payments[pid].status == "FAILED" and store.payments[pid].failure_code == "not_submitted"
