"""top_up and friends against fakes: fast, no I/O."""

from __future__ import annotations

import pytest

from payment_service.domain import ids
from payment_service.domain.errors import (
    GatewayUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    ValidationFailed,
)
from payment_service.domain.events import EventType
from payment_service.services import idempotency
from payment_service.services import payments as svc
from payment_service.services.risk import RiskAction, RiskRules

from .fakes import FakeGateway, fake_uow_factory


@pytest.fixture
def env():
    uow_factory, store = fake_uow_factory()
    gw = FakeGateway()
    settings = svc.PaymentSettings(RiskRules(velocity_max_attempts=3, new_device_amount=100_000), 900)
    return uow_factory, store, gw, settings


def topup(env, token="pm_card_visa", amount=5000, user="u_1", device=None, payment_id=None, **kw):
    uow_factory, store, gw, settings = env
    cmd = svc.TopUp(
        user_id=user,
        amount=amount,
        currency="INR",
        payment_id=payment_id or ids.new_id("pay"),
        gateway="stripe",
        token=token,
        device_id=device,
        **kw,
    )
    return svc.top_up(cmd, uow_factory, {"stripe": gw}, settings)


def events(store, type_=None):
    return [e for e in store.outbox if type_ is None or e.type == type_]


def test_success_captures_with_one_event(env) -> None:
    p = topup(env)
    _, store, gw, _ = env
    assert p.status == "CAPTURED" and p.captured_at and p.card_last4 == "4242" and p.gateway_payment_id == "pi_1"
    (evt,) = events(store)
    assert evt.type == EventType.PAYMENT_CAPTURED and evt.user_id == "u_1"
    assert evt.data["amount"] == 5000 and evt.data["payment_id"] == p.id
    assert gw.calls[0].idempotency_key == f"{p.id}:charge" and gw.calls[0].metadata["payment_id"] == p.id


def test_decline_fails_with_event(env) -> None:
    p = topup(env, token="pm_card_chargeDeclined")
    assert p.status == "FAILED" and p.failure_code == "card_declined"
    assert [e.type for e in events(env[1])] == [EventType.PAYMENT_FAILED]


def test_three_ds_waits_with_expiry_and_no_event(env) -> None:
    p = topup(env, token="pm_card_threeDSecure2Required")
    assert p.status == "PENDING_3DS" and p.next_action_url and p.expires_at is not None
    assert (p.expires_at - p.created_at).total_seconds() == pytest.approx(900, abs=2)
    assert events(env[1]) == []


def test_gateway_error_fails_the_payment(env) -> None:
    p = topup(env, token="tok_invalid")
    assert p.status == "FAILED" and p.failure_code == "invalid_token"


def test_unavailable_keeps_pending_and_a_retry_resumes_without_second_charge(env) -> None:
    uow_factory, store, gw, _ = env
    gw.unavailable = True
    pid = ids.new_id("pay")
    with pytest.raises(GatewayUnavailable):
        topup(env, payment_id=pid)
    assert store.payments[pid].status == "PENDING"
    gw.unavailable = False
    p = topup(env, payment_id=pid)
    assert p.status == "CAPTURED"
    assert {c.idempotency_key for c in gw.calls} == {f"{pid}:charge"}
    assert len(gw.charges) == 1 and len(events(store, EventType.PAYMENT_CAPTURED)) == 1
    # A third call with the same payment id returns it as it is, no gateway call.
    n = len(gw.calls)
    assert topup(env, payment_id=pid).status == "CAPTURED" and len(gw.calls) == n


def test_velocity_refuses_before_any_gateway_call(env) -> None:
    for _ in range(3):
        assert topup(env).status == "CAPTURED"
    p = topup(env)
    assert p.status == "FAILED" and p.failure_code == "fraud_suspected" and "velocity_attempts" in p.failure_message
    assert p.risk_decision == "refuse" and "velocity_attempts" in p.risk_reasons
    assert len(env[2].calls) == 3
    assert events(env[1])[-1].type == EventType.PAYMENT_FAILED
    # Another user is not affected.
    assert topup(env, user="u_2").status == "CAPTURED"


def test_new_device_above_amount_forces_3ds_then_known_device_does_not(env) -> None:
    p = topup(env, amount=200_000, device="dev-new")
    assert p.status == "PENDING_3DS" and p.risk_decision == RiskAction.REQUIRE_3DS.value
    assert env[2].calls[-1].request_three_d_secure is True
    topup(env, amount=500, device="dev-known")
    p = topup(env, amount=200_000, device="dev-known")
    assert p.status == "CAPTURED" and p.risk_decision == "allow"


def test_saved_method_of_another_user_is_not_found(env) -> None:
    uow_factory, store, gw, _ = env
    m = svc.add_payment_method("u_1", "stripe", "tok_visa", uow_factory, {"stripe": gw})
    assert m.last4 == "4242" and m.gateway_token == "pm_saved_tok_visa" and store.customers[("u_1", "stripe")]
    cmd = svc.TopUp(user_id="u_2", amount=100, currency="INR", payment_id=ids.new_id("pay"), payment_method_id=m.id)
    with pytest.raises(ValidationFailed):
        svc.top_up(cmd, uow_factory, {"stripe": gw}, env[3])
    cmd = svc.TopUp(user_id="u_1", amount=100, currency="INR", payment_id=ids.new_id("pay"), payment_method_id=m.id)
    p = svc.top_up(cmd, uow_factory, {"stripe": gw}, env[3])
    assert p.status == "CAPTURED" and p.payment_method_id == m.id
    assert gw.calls[-1].customer_ref == "cus_u_1" and gw.calls[-1].token == "pm_saved_tok_visa"


def test_blocked_bin_on_saved_method_refuses(env) -> None:
    uow_factory, _, gw, _ = env
    m = svc.add_payment_method("u_1", "stripe", "tok_visa", uow_factory, {"stripe": gw})
    settings = svc.PaymentSettings(RiskRules(blocked_bins=frozenset({"4242"})), 900)
    cmd = svc.TopUp(user_id="u_1", amount=100, currency="INR", payment_id=ids.new_id("pay"), payment_method_id=m.id)
    p = svc.top_up(cmd, uow_factory, {"stripe": gw}, settings)
    assert p.status == "FAILED" and "blocked_bin:424242" in p.risk_reasons and gw.calls == []


def test_delete_method_detaches_and_hides(env) -> None:
    uow_factory, store, gw, _ = env
    m = svc.add_payment_method("u_1", "stripe", "tok_visa", uow_factory, {"stripe": gw})
    with pytest.raises(Exception, match="not found"):
        svc.delete_payment_method("u_2", m.id, uow_factory, {"stripe": gw})
    svc.delete_payment_method("u_1", m.id, uow_factory, {"stripe": gw})
    assert gw.detached == [m.gateway_token] and svc.list_payment_methods("u_1", uow_factory) == []
    assert store.methods[m.id].deleted_at is not None  # kept for audit


def test_idempotency_claim_replay_reuse_and_in_use() -> None:
    uow_factory, store = fake_uow_factory()
    c1 = idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "h1", "pay", 86400)
    assert not c1.replay and c1.record.resource_id.startswith("pay_")
    with pytest.raises(IdempotencyKeyInUse):
        idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "h1", "pay", 86400)
    with pytest.raises(IdempotencyKeyReused):
        idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "h2", "pay", 86400)
    idempotency.complete(uow_factory, c1.record, 201, '{"ok":1}')
    c2 = idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "h1", "pay", 86400)
    assert c2.replay and c2.record.response_status == 201 and c2.record.resource_id == c1.record.resource_id
    # Scoped to the caller: another user may use the same key.
    assert not idempotency.claim(uow_factory, "user:v", "k", "POST", "/p", "h2", "pay", 86400).replay


def test_idempotency_release_lets_a_retry_resume_the_same_resource() -> None:
    uow_factory, _ = fake_uow_factory()
    c1 = idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "h", "pay", 86400)
    idempotency.release(uow_factory, c1.record, forget=False)
    c2 = idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "h", "pay", 86400)
    assert not c2.replay and c2.record.resource_id == c1.record.resource_id
    idempotency.release(uow_factory, c2.record, forget=True)
    c3 = idempotency.claim(uow_factory, "user:u", "k", "POST", "/p", "other", "pay", 86400)
    assert c3.record.resource_id != c1.record.resource_id
