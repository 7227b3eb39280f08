"""The top-up as a keyed request (TopUpFlow under services/idempotency.execute) against fakes: fast, no I/O."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from payment_service.domain import ids
from payment_service.domain.errors import (
    GatewayUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    ValidationFailed,
)
from payment_service.domain.events import EventType
from payment_service.gateways.base import ChargeResult, ChargeStatus
from payment_service.services import idempotency, jobs
from payment_service.services import payments as svc
from payment_service.services.risk import RiskAction, RiskRules

from .fakes import Clock, FakeGateway, fake_uow_factory, run_flow


@pytest.fixture
def env():
    uow_factory, store = fake_uow_factory()
    gw = FakeGateway()
    settings = svc.PaymentSettings(RiskRules(velocity_max_attempts=3, new_device_amount=100_000), 900)
    return uow_factory, store, gw, settings, Clock()


def flow(env, token="pm_card_visa", amount=5000, user="u_1", device=None, settings=None, **kw) -> svc.TopUpFlow:
    _, _, gw, default_settings, clock = env
    cmd = svc.TopUp(user_id=user, amount=amount, currency="INR", gateway=kw.pop("gateway", "stripe"), token=token,
                    device_id=device, **kw)
    return svc.TopUpFlow(cmd, {"stripe": gw}, settings or default_settings)


def topup(env, token="pm_card_visa", amount=5000, user="u_1", device=None, key=None, **kw) -> svc.Payment:
    uow_factory, *_, clock = env
    return run_flow(flow(env, token, amount, user, device, **kw), uow_factory, key=key, caller=f"user:{user}",
                    now=clock)


def keyed(caller="user:u_1", key="k", fingerprint="fp") -> idempotency.KeyedRequest:
    return idempotency.KeyedRequest(caller, idempotency.validate_key(key), "POST", "/payments/topup", fingerprint,
                                    86400)


def render(p: svc.Payment) -> tuple[dict, int]:
    return {"id": p.id, "status": p.status}, 201


def execute(env, f, req) -> idempotency.Reply:
    uow_factory, *_, clock = env
    return idempotency.execute(f, req, uow_factory, render, now=clock)


def events(store, type_=None):
    return [e for e in store.outbox if type_ is None or e.type == type_]


# --- outcomes -------------------------------------------------------------------------------------


def test_success_captures_with_one_event(env) -> None:
    p = topup(env)
    _, store, gw, _, clock = env
    assert p.status == "CAPTURED" and p.captured_at == clock.t and p.card_last4 == "4242"
    assert p.gateway_payment_id == "pi_1" and p.claimed_until is None
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
    assert (p.expires_at - p.created_at).total_seconds() == 900
    # The expiry sweep looks at it when it expires, and nobody holds it meanwhile.
    assert p.next_attempt_at == p.expires_at and p.claimed_until is None
    assert events(env[1]) == []


def test_gateway_error_fails_the_payment(env) -> None:
    p = topup(env, token="tok_invalid")
    assert p.status == "FAILED" and p.failure_code == "invalid_token"


# --- atomic phases --------------------------------------------------------------------------------


def test_a_captured_top_up_is_two_transactions_and_one_gateway_call(env) -> None:
    _, store, gw, _, _ = env
    p = topup(env)
    assert p.status == "CAPTURED" and store.commits == 2 and len(gw.calls) == 1
    (key,) = store.idem.values()
    assert key.status == "COMPLETED" and key.recovery_point == "FINISHED" and key.resource_id == p.id


def test_a_fraud_refused_top_up_is_one_transaction(env) -> None:
    _, store, gw, _, _ = env
    settings = svc.PaymentSettings(RiskRules(max_amount=1000), 900)
    p = topup(env, amount=5000, settings=settings)
    assert p.status == "FAILED" and p.failure_code == "fraud_suspected" and p.claimed_until is None
    assert store.commits == 1 and gw.calls == []
    assert [e.type for e in events(store)] == [EventType.PAYMENT_FAILED]
    (key,) = store.idem.values()
    assert key.status == "COMPLETED" and json.loads(key.response_body) == {"id": p.id, "status": "FAILED"}


@pytest.mark.parametrize(
    "kw",
    [{"gateway": "paypal"}, {"payment_method_id": "pm_nobody"}],
    ids=["unknown_gateway", "unknown_method"],
)
def test_a_domain_error_in_phase_1_stores_nothing(env, kw) -> None:
    uow_factory, store, gw, _, _ = env
    with pytest.raises(ValidationFailed):
        run_flow(flow(env, **kw), uow_factory, key="k1", now=env[4])
    assert store.idem == {} and store.payments == {} and store.outbox == [] and gw.calls == []
    assert store.commits == 0
    # Nothing was kept, the key included: the same key with a corrected body is a new request.
    p = topup(env, key="k1")
    assert p.status == "CAPTURED" and len(store.idem) == 1


def test_unavailable_keeps_pending_and_a_retry_resumes_without_second_charge(env) -> None:
    _, store, gw, _, clock = env
    gw.unavailable = True
    with pytest.raises(GatewayUnavailable, match="did not answer"):
        topup(env, key="k1")
    (pending,) = store.payments.values()
    pid = pending.id
    assert pending.status == "PENDING" and pending.claimed_until is None  # let go: no lease to wait for
    assert pending.attempts == 1 and "gateway unavailable" in pending.last_error
    assert pending.next_attempt_at == clock.t + timedelta(seconds=180)  # the reconcile sweep's turn
    (key,) = store.idem.values()
    assert key.status == "IN_PROGRESS" and key.locked_until is None and key.resource_id == pid
    gw.unavailable = False
    clock.advance(seconds=5)
    p = topup(env, key="k1")
    assert p.id == pid and p.status == "CAPTURED" and p.claimed_until is None
    assert {c.idempotency_key for c in gw.calls} == {f"{pid}:charge"} and len(gw.calls) == 2
    assert len(gw.charges) == 1 and len(events(store, EventType.PAYMENT_CAPTURED)) == 1
    # A third call with the same key replays the stored answer: no gateway call.
    assert topup(env, key="k1").status == "CAPTURED" and len(gw.calls) == 2


def test_a_resumed_top_up_while_someone_else_holds_the_payment_is_in_use(env) -> None:
    uow_factory, store, gw, _, clock = env
    gw.unavailable = True
    with pytest.raises(GatewayUnavailable):
        topup(env, key="k1")
    (pid,) = store.payments
    gw.unavailable = False
    clock.advance(seconds=181)
    # A sweep holds the payment: its own gateway call is in flight.
    with uow_factory() as uow:
        assert uow.records.claim("payment", pid, {"PENDING"}, clock.t, clock.t + timedelta(seconds=300))
        uow.commit()
    n = len(gw.calls)
    with pytest.raises(IdempotencyKeyInUse):
        topup(env, key="k1")
    assert len(gw.calls) == n and store.payments[pid].status == "PENDING"
    # The take-over rolled back with the refusal: the key is free for the next retry.
    (key,) = store.idem.values()
    assert key.status == "IN_PROGRESS" and key.locked_until is None
    clock.advance(seconds=301)  # the sweep's lease lapsed (it died)
    p = topup(env, key="k1")
    assert p.id == pid and p.status == "CAPTURED" and len(gw.charges) == 1


def test_a_retry_after_the_sweep_resolved_the_payment_answers_its_outcome(env) -> None:
    uow_factory, store, gw, settings, clock = env
    gw.unavailable = True
    with pytest.raises(GatewayUnavailable):
        topup(env, key="k1")
    (pid,) = store.payments
    gw.unavailable = False
    clock.advance(seconds=181)
    assert jobs.reconcile_pending(uow_factory, {"stripe": gw}, settings, now=clock).finished == 1
    n = len(gw.calls)
    p = topup(env, key="k1")
    assert p.id == pid and p.status == "CAPTURED" and len(gw.calls) == n  # nothing left to ask the gateway
    assert len(events(store, EventType.PAYMENT_CAPTURED)) == 1
    (key,) = store.idem.values()
    assert key.status == "COMPLETED"


def test_a_charge_still_processing_stays_pending_for_the_sweep(env, monkeypatch) -> None:
    _, store, gw, _, clock = env
    monkeypatch.setattr(ids, "new_id", lambda prefix: "pay_processing")
    gw.results["pay_processing:charge"] = ChargeResult(ChargeStatus.PROCESSING, "pi_slow")
    p = topup(env)
    assert p.status == "PENDING" and p.gateway_payment_id == "pi_slow" and p.claimed_until is None
    assert p.attempts == 0 and p.last_error is None and p.next_attempt_at == clock.t + timedelta(seconds=180)
    assert events(store) == [] and store.commits == 2


def test_the_same_key_while_the_first_request_is_in_flight_is_in_use(env) -> None:
    _, store, gw, _, _ = env
    seen: list[Exception] = []
    charge = gw.charge

    def charge_while_the_client_retries(request):
        try:
            execute(env, flow(env), keyed(key="k1"))
        except IdempotencyKeyInUse as exc:
            seen.append(exc)
        return charge(request)

    gw.charge = charge_while_the_client_retries
    reply = execute(env, flow(env), keyed(key="k1"))
    assert reply.status == 201 and not reply.replayed and len(seen) == 1
    assert len(gw.calls) == 1 and len(store.payments) == 1


def test_a_holder_that_outlived_its_lock_is_taken_over_and_charged_once(env) -> None:
    _, store, gw, _, clock = env
    charge = gw.charge
    replies: list[idempotency.Reply] = []
    stuck = [True]

    def slow_charge(request):
        if stuck and stuck.pop():
            clock.advance(seconds=61)  # the first holder is stuck past its 60 s lock; the client retries
            replies.append(execute(env, flow(env), keyed(key="k1")))
        return charge(request)

    gw.charge = slow_charge
    first = execute(env, flow(env), keyed(key="k1"))
    (pid,) = store.payments
    assert json.loads(replies[0].body) == json.loads(first.body) == {"id": pid, "status": "CAPTURED"}
    assert {c.idempotency_key for c in gw.calls} == {f"{pid}:charge"} and len(gw.charges) == 1
    assert len(events(store, EventType.PAYMENT_CAPTURED)) == 1


def test_idempotency_replay_reuse_and_caller_scope(env) -> None:
    _, store, gw, _, _ = env
    first = execute(env, flow(env), keyed(key="k", fingerprint="h1"))
    assert first.status == 201 and not first.replayed
    with pytest.raises(IdempotencyKeyReused):
        execute(env, flow(env), keyed(key="k", fingerprint="h2"))
    again = execute(env, flow(env), keyed(key="k", fingerprint="h1"))
    assert again.replayed and again.status == 201 and again.body == first.body and len(gw.calls) == 1
    # Scoped to the caller: another user may use the same key.
    other = execute(env, flow(env, user="u_2"), keyed(caller="user:u_2", key="k", fingerprint="h2"))
    assert not other.replayed and json.loads(other.body)["id"] != json.loads(first.body)["id"]
    # The key is stored as its hash, never as sent.
    assert all(k.key != "k" and len(k.key) == 64 for k in store.idem.values())


# --- the fraud pre-check and saved methods --------------------------------------------------------


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
    uow_factory, store, gw, _, _ = env
    m = svc.add_payment_method("u_1", "stripe", "tok_visa", uow_factory, {"stripe": gw})
    assert m.last4 == "4242" and m.gateway_token == "pm_saved_tok_visa" and store.customers[("u_1", "stripe")]
    with pytest.raises(ValidationFailed):
        topup(env, token=None, amount=100, user="u_2", payment_method_id=m.id, gateway=None)
    assert store.payments == {} and store.idem == {}
    p = topup(env, token=None, amount=100, payment_method_id=m.id, gateway=None)
    assert p.status == "CAPTURED" and p.payment_method_id == m.id
    assert gw.calls[-1].customer_ref == "cus_u_1" and gw.calls[-1].token == "pm_saved_tok_visa"


def test_blocked_bin_on_saved_method_refuses(env) -> None:
    uow_factory, store, gw, _, _ = env
    m = svc.add_payment_method("u_1", "stripe", "tok_visa", uow_factory, {"stripe": gw})
    settings = svc.PaymentSettings(RiskRules(blocked_bins=frozenset({"4242"})), 900)
    commits = store.commits
    p = topup(env, token=None, amount=100, payment_method_id=m.id, gateway=None, settings=settings)
    assert p.status == "FAILED" and "blocked_bin:424242" in p.risk_reasons and gw.calls == []
    assert store.commits == commits + 1


def test_delete_method_detaches_and_hides(env) -> None:
    uow_factory, store, gw, _, _ = env
    m = svc.add_payment_method("u_1", "stripe", "tok_visa", uow_factory, {"stripe": gw})
    with pytest.raises(Exception, match="not found"):
        svc.delete_payment_method("u_2", m.id, uow_factory, {"stripe": gw})
    svc.delete_payment_method("u_1", m.id, uow_factory, {"stripe": gw})
    assert gw.detached == [m.gateway_token] and svc.list_payment_methods("u_1", uow_factory) == []
    assert store.methods[m.id].deleted_at is not None  # kept for audit
