"""The circuit breaker (domain/breaker.py), the guarded gateway and the 429 retry (gateways/resilience.py),
and a top-up meeting an open breaker (services/payments.TopUpFlow): fakes and a hand-moved clock, no I/O."""

from __future__ import annotations

import logging
import time

import pytest
from prometheus_client import REGISTRY

from payment_service.domain.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from payment_service.domain.errors import GatewayUnavailable
from payment_service.gateways.base import GatewayError, GatewayUnavailableError
from payment_service.gateways.resilience import CircuitOpenError, GuardedGateway, log_transition, retry_rate_limited
from payment_service.services import idempotency
from payment_service.services import payments as svc
from payment_service.services.risk import RiskRules

from .fakes import Clock, FakeGateway, Seconds, fake_uow_factory, run_flow

POLICY = BreakerPolicy(window=10, window_seconds=60, min_calls=4, failure_ratio=0.5, open_seconds=5,
                       probe_seconds=30)


@pytest.fixture
def clock() -> Seconds:
    return Seconds()


@pytest.fixture
def transitions() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def breaker(clock: Seconds, transitions: list) -> CircuitBreaker:
    return CircuitBreaker("stripe", POLICY, clock, lambda n, a, b, why: transitions.append((n, a.value, b.value)))


def call(breaker: CircuitBreaker, failed: bool | None) -> bool:
    permit = breaker.allow()
    if permit is None:
        return False
    breaker.record(permit, failed)
    return True


# --- the state machine ---------------------------------------------------------------------------


def test_opens_when_most_recent_calls_failed(breaker: CircuitBreaker, transitions: list) -> None:
    for failed in (False, True, False, True):  # 2 of 4: half of them, which is "most" at ratio 0.5
        assert call(breaker, failed)
    assert breaker.state is BreakerState.OPEN
    assert transitions == [("stripe", "closed", "open")]
    assert breaker.allow() is None and breaker.retry_after() == pytest.approx(5)


def test_needs_min_calls_and_a_majority(breaker: CircuitBreaker) -> None:
    for failed in (True, True, True):  # 3 failures, but fewer calls than min_calls
        call(breaker, failed)
    assert breaker.state is BreakerState.CLOSED
    breaker2 = CircuitBreaker("razorpay", POLICY, Seconds())
    for failed in (True, False, False, False, False, True, False, False):
        call(breaker2, failed)
    assert breaker2.state is BreakerState.CLOSED  # 2 of 8


def test_neutral_outcomes_do_not_count(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        call(breaker, None)  # 429s, 409s: busy, not down
    call(breaker, True)
    assert breaker.state is BreakerState.CLOSED


def test_old_outcomes_fall_out_of_the_window(breaker: CircuitBreaker, clock: Seconds) -> None:
    for _ in range(3):
        call(breaker, True)
    clock.t += 61
    call(breaker, True)  # 1 recent call: no verdict
    assert breaker.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_and_closes_on_success(
    breaker: CircuitBreaker, clock: Seconds, transitions: list
) -> None:
    for _ in range(4):
        call(breaker, True)
    clock.t += 4.9
    assert breaker.allow() is None
    clock.t += 0.2
    assert breaker.state is BreakerState.HALF_OPEN and breaker.retry_after() == 0
    probe = breaker.allow()
    assert probe is not None and probe.probe
    assert breaker.allow() is None  # one probe at a time
    assert breaker.retry_after() > 0
    breaker.record(probe, False)
    assert breaker.state is BreakerState.CLOSED
    assert [t[1:] for t in transitions] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert call(breaker, False)


def test_a_failed_probe_opens_again(breaker: CircuitBreaker, clock: Seconds) -> None:
    for _ in range(4):
        call(breaker, True)
    clock.t += 5
    probe = breaker.allow()
    assert probe is not None
    breaker.record(probe, True)
    assert breaker.state is BreakerState.OPEN and breaker.retry_after() == pytest.approx(5)


def test_a_probe_that_never_reports_stops_blocking(breaker: CircuitBreaker, clock: Seconds) -> None:
    for _ in range(4):
        call(breaker, True)
    clock.t += 5
    assert breaker.allow() is not None  # its caller dies without reporting
    assert breaker.allow() is None
    clock.t += 31
    assert breaker.allow() is not None


def test_outcomes_of_calls_from_an_earlier_state_are_ignored(breaker: CircuitBreaker, clock: Seconds) -> None:
    slow = breaker.allow()  # began while closed
    assert slow is not None
    for _ in range(4):
        call(breaker, True)
    clock.t += 5
    probe = breaker.allow()
    assert probe is not None
    breaker.record(slow, False)  # a success from before the breaker opened closes nothing
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(probe, False)
    assert breaker.state is BreakerState.CLOSED


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(window=5, min_calls=6)
    with pytest.raises(ValueError):
        BreakerPolicy(failure_ratio=0)


# --- the guarded gateway -------------------------------------------------------------------------


def test_guarded_gateway_counts_failures_and_refuses_without_calling(breaker: CircuitBreaker) -> None:
    inner = FakeGateway()
    gw = GuardedGateway(inner, breaker)
    inner.unavailable = True
    for _ in range(4):
        with pytest.raises(GatewayUnavailableError):
            gw.charge(_request())
    assert len(inner.calls) == 4
    with pytest.raises(CircuitOpenError) as info:
        gw.charge(_request())
    assert len(inner.calls) == 4  # refused before the gateway was asked
    assert isinstance(info.value, GatewayUnavailableError) and info.value.retry_after == pytest.approx(5)
    assert gw.name == "stripe" and gw.state is inner.state  # everything else passes through


def test_a_definite_refusal_is_the_gateway_answering(breaker: CircuitBreaker) -> None:
    class Refusing(FakeGateway):
        def charge(self, request):
            raise GatewayError("no such card", code="invalid_token", http_status=400)

    gw = GuardedGateway(Refusing(), breaker)
    for _ in range(6):
        with pytest.raises(GatewayError):
            gw.charge(_request())
    assert breaker.state is BreakerState.CLOSED


def test_rate_limits_do_not_open_the_breaker(breaker: CircuitBreaker) -> None:
    class Busy(FakeGateway):
        def charge(self, request):
            raise GatewayUnavailableError("rate limited", http_status=429)

    gw = GuardedGateway(Busy(), breaker)
    for _ in range(6):
        with pytest.raises(GatewayUnavailableError):
            gw.charge(_request())
    assert breaker.state is BreakerState.CLOSED


def test_each_call_is_timed_by_gateway_call_and_outcome(breaker: CircuitBreaker) -> None:
    def seen(call: str, outcome: str) -> tuple[float, float]:
        labels = {"gateway": "stripe", "call": call, "outcome": outcome}
        count = REGISTRY.get_sample_value("payment_gateway_call_seconds_count", labels) or 0.0
        return count, REGISTRY.get_sample_value("payment_gateway_call_seconds_sum", labels) or 0.0

    class Slow(FakeGateway):
        def charge(self, request):
            time.sleep(0.02)
            return super().charge(request)

    inner = Slow()
    gw = GuardedGateway(inner, breaker)
    ok_before, failed_before = seen("charge", "ok"), seen("charge", "failed")
    gw.charge(_request())
    count, total = seen("charge", "ok")
    assert count == ok_before[0] + 1 and total - ok_before[1] >= 0.02
    inner.unavailable = True
    sent = len(inner.calls)
    for _ in range(10):  # failures until the breaker opens, then refusals, which are never sent
        with pytest.raises(GatewayUnavailableError):
            gw.charge(_request())
    assert breaker.state is BreakerState.OPEN
    failed = len(inner.calls) - sent
    assert 1 <= failed < 10 and seen("charge", "failed")[0] == failed_before[0] + failed


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker("razorpay", POLICY, Seconds(), log_transition)
    with caplog.at_level(logging.INFO, logger="payment_service.gateways.resilience"):
        for _ in range(4):
            call(b, True)
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING and rec.getMessage() == "gateway circuit open"
    assert (rec.gateway, rec.from_state, rec.to_state) == ("razorpay", "closed", "open")
    assert "4 of the last 4 calls failed" in rec.reason


# --- 429: retried with the same call ---------------------------------------------------------------


def test_429_is_retried_with_the_same_call_then_answers() -> None:
    sent: list[str] = []
    waits: list[float] = []

    def charge() -> str:
        sent.append("pay_1:charge")  # the key is part of the call: every try sends the same one
        if len(sent) < 3:
            raise GatewayUnavailableError("rate limited", http_status=429)
        return "pi_1"

    assert retry_rate_limited("stripe", charge, (0.1, 0.2, 0.4), waits.append) == "pi_1"
    assert sent == ["pay_1:charge"] * 3 and len(waits) == 2
    assert 0.05 <= waits[0] <= 0.15 and 0.1 <= waits[1] <= 0.3  # jittered backoff


def test_429_that_persists_is_unavailable_and_other_errors_are_not_retried() -> None:
    tries = []

    def busy() -> None:
        tries.append(1)
        raise GatewayUnavailableError("rate limited", http_status=429)

    with pytest.raises(GatewayUnavailableError):
        retry_rate_limited("stripe", busy, (0.01, 0.01), lambda s: None)
    assert len(tries) == 3
    tries.clear()

    def down() -> None:
        tries.append(1)
        raise GatewayUnavailableError("503", http_status=503)

    with pytest.raises(GatewayUnavailableError):
        retry_rate_limited("stripe", down, (0.01, 0.01), lambda s: None)
    assert len(tries) == 1


# --- a top-up meets an open breaker ---------------------------------------------------------------


def _request():
    from payment_service.gateways.base import ChargeRequest

    return ChargeRequest("pay_x", 1000, "INR", "pay_x:charge", "pm_card_visa")


def _flow(gateways, breakers, gateway="stripe") -> svc.TopUpFlow:
    cmd = svc.TopUp(user_id="u_1", amount=5000, currency="INR", gateway=gateway, token="pm_card_visa")
    return svc.TopUpFlow(cmd, gateways, svc.PaymentSettings(RiskRules()), breakers)


def test_open_breaker_refuses_the_top_up_before_anything_is_recorded(breaker: CircuitBreaker) -> None:
    uow_factory, store = fake_uow_factory()
    stripe, razorpay = FakeGateway(), FakeGateway()
    razorpay.name = "razorpay"
    for _ in range(4):
        call(breaker, True)
    gateways = {"stripe": GuardedGateway(stripe, breaker), "razorpay": razorpay}
    breakers = {"stripe": breaker, "razorpay": CircuitBreaker("razorpay", POLICY, Seconds())}
    with pytest.raises(GatewayUnavailable) as info:
        run_flow(_flow(gateways, breakers), uow_factory, key="k1", now=Clock())
    assert info.value.retry_after == 5 and "no payment was made" in info.value.detail
    assert store.payments == {} and store.idem == {} and store.outbox == [] and stripe.calls == []
    # The other gateway is unaffected.
    p = run_flow(_flow(gateways, breakers, "razorpay"), uow_factory, key="k2", now=Clock())
    assert p.status == "CAPTURED" and len(razorpay.calls) == 1


def test_half_open_lets_a_top_up_through_as_the_probe(breaker: CircuitBreaker, clock: Seconds) -> None:
    uow_factory, _ = fake_uow_factory()
    stripe = FakeGateway()
    for _ in range(4):
        call(breaker, True)
    clock.t += 5
    p = run_flow(_flow({"stripe": GuardedGateway(stripe, breaker)}, {"stripe": breaker}), uow_factory, now=Clock())
    assert p.status == "CAPTURED" and breaker.state is BreakerState.CLOSED


def test_a_breaker_that_opens_mid_request_leaves_the_payment_pending(breaker: CircuitBreaker) -> None:
    """Phase 1 passed the breaker, but by the gateway call it had opened: the lifecycle of an unavailable
    gateway (the record released for a retry with the same key or the sweep), with the breaker's wait."""
    uow_factory, store = fake_uow_factory()
    stripe = FakeGateway()
    flow = _flow({"stripe": GuardedGateway(stripe, breaker)}, {"stripe": breaker})
    create = flow.create

    def create_then_open(*a, **kw):
        record = create(*a, **kw)
        for _ in range(4):
            call(breaker, True)
        return record

    flow.create = create_then_open  # type: ignore[method-assign]
    req = idempotency.KeyedRequest("user:u_1", idempotency.validate_key("k"), "POST", "/payments/topup", "fp", 86400)
    with pytest.raises(GatewayUnavailable) as info:
        idempotency.execute(flow, req, uow_factory, lambda p: ({"id": p.id}, 201), Clock())
    assert info.value.retry_after == 5 and stripe.calls == []
    (payment,) = store.payments.values()
    assert payment.status == "PENDING" and payment.claimed_until is None
    assert "circuit open" in (payment.last_error or "")
