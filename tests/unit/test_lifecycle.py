"""The lifecycles of domain/lifecycle.py, and the machinery of services/lifecycle.py (walk, sweep)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from payment_service.domain import lifecycle as lc
from payment_service.domain.events import EventType
from payment_service.domain.lifecycle import PAYMENTS, REFUNDS, WITHDRAWALS, Lifecycle
from payment_service.domain.payments import Payment, Refund
from payment_service.domain.withdrawals import Withdrawal
from payment_service.services import lifecycle as machinery
from payment_service.services.lifecycle import SweepPolicy, SweepReport, sweep, walk

from .fakes import Clock, fake_uow_factory

T = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def payment(status: str = "PENDING", pid: str = "pay_1", **kw) -> Payment:
    return Payment(id=pid, user_id="u_1", amount=5000, currency="INR", gateway="stripe", status=status,
                   created_at=T, updated_at=T, **kw)


def refund(status: str = "PENDING", rid: str = "re_1", **kw) -> Refund:
    return Refund(id=rid, payment_id="pay_1", user_id="u_1", amount=2000, currency="INR", status=status,
                  created_at=T, updated_at=T, **kw)


def withdrawal(status: str = "REQUESTED", **kw) -> Withdrawal:
    return Withdrawal(id="wd_1", user_id="u_1", amount=100_000, currency="INR", mode="IMPS", status=status,
                      beneficiary_name="A Kumar", created_at=T, updated_at=T, account_last4="9012",
                      ifsc="HDFC0000123", **kw)


def final_statuses(life: Lifecycle) -> set[str]:
    movable = set().union(*life.transitions.values())
    return set(life.statuses) - movable


# --- the declarations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("life", "current", "target", "steps"),
    [
        (WITHDRAWALS, "REQUESTED", "REVERSED", ["PROCESSING", "SETTLED", "REVERSED"]),
        (WITHDRAWALS, "REQUESTED", "SETTLED", ["PROCESSING", "SETTLED"]),
        (WITHDRAWALS, "REQUESTED", "FAILED", ["FAILED"]),
        (WITHDRAWALS, "PROCESSING", "REVERSED", ["SETTLED", "REVERSED"]),
        (WITHDRAWALS, "PROCESSING", "PROCESSING", []),  # equal: nothing to do
        (WITHDRAWALS, "SETTLED", "PROCESSING", []),  # behind: a late progress report
        (WITHDRAWALS, "SETTLED", "FAILED", []),  # a failure after settlement
        (WITHDRAWALS, "REVERSED", "SETTLED", []),
        (PAYMENTS, "PENDING", "CAPTURED", ["CAPTURED"]),
        (PAYMENTS, "PENDING", "PENDING_3DS", ["PENDING_3DS"]),
        (PAYMENTS, "PENDING_3DS", "CAPTURED", ["CAPTURED"]),
        (PAYMENTS, "PENDING_3DS", "PENDING", []),
        (PAYMENTS, "FAILED", "CAPTURED", []),  # a late success is not a move back
        (PAYMENTS, "EXPIRED", "CAPTURED", []),
        (PAYMENTS, "CAPTURED", "FAILED", []),
        (REFUNDS, "PENDING", "SUCCEEDED", ["SUCCEEDED"]),
        (REFUNDS, "FAILED", "SUCCEEDED", []),
    ],
)
def test_path_walks_forward_only(life, current, target, steps) -> None:
    assert life.path(current, target) == steps


@pytest.mark.parametrize(
    ("life", "finals"),
    [(PAYMENTS, {"CAPTURED", "FAILED", "EXPIRED"}), (REFUNDS, {"SUCCEEDED", "FAILED"}),
     (WITHDRAWALS, {"FAILED", "REVERSED"})],
    ids=["payments", "refunds", "withdrawals"],
)
def test_final_statuses_never_move(life, finals) -> None:
    assert final_statuses(life) == finals
    assert not (finals & life.open)
    for final, target in itertools.product(finals, life.statuses):
        assert life.path(final, target) == [] and not life.can_move(final, target)


def test_every_open_status_can_still_reach_a_final_one() -> None:
    for life in (PAYMENTS, REFUNDS, WITHDRAWALS):
        for status in life.open:
            assert any(life.path(status, final) for final in final_statuses(life)), (life.kind, status)


@pytest.mark.parametrize(
    ("life", "outcome", "target"),
    [
        (PAYMENTS, "succeeded", "CAPTURED"), (PAYMENTS, "requires_action", "PENDING_3DS"),
        (PAYMENTS, "processing", None), (PAYMENTS, "failed", "FAILED"), (PAYMENTS, "canceled", "FAILED"),
        (REFUNDS, "pending", None), (REFUNDS, "succeeded", "SUCCEEDED"), (REFUNDS, "failed", "FAILED"),
        (WITHDRAWALS, "processing", "PROCESSING"), (WITHDRAWALS, "settled", "SETTLED"),
        (WITHDRAWALS, "failed", "FAILED"), (WITHDRAWALS, "reversed", "REVERSED"),
    ],
)
def test_a_gateway_outcome_maps_to_a_target(life, outcome, target) -> None:
    assert life.target_for(outcome) == target


def test_an_outcome_the_gateway_should_never_send_is_loud() -> None:
    with pytest.raises(KeyError):
        PAYMENTS.target_for("teleported")


# --- move -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "event_type", "allowed"),
    [
        ("PENDING", "CAPTURED", EventType.PAYMENT_CAPTURED, ("PENDING", "PENDING_3DS")),
        ("PENDING_3DS", "FAILED", EventType.PAYMENT_FAILED, ("PENDING", "PENDING_3DS")),
        ("PENDING_3DS", "EXPIRED", EventType.PAYMENT_EXPIRED, ("PENDING_3DS",)),
        ("PENDING", "PENDING_3DS", None, ("PENDING",)),
    ],
)
def test_a_payment_move_emits_its_event_and_ends_the_claim(current, target, event_type, allowed) -> None:
    p = payment(current, claimed_until=T + timedelta(seconds=60), gateway_payment_id="pi_1")
    at = T + timedelta(seconds=5)
    move = PAYMENTS.move(p, target, at, failure_code="x")
    assert (move.kind, move.record_id, move.target, move.allowed_from) == ("payment", "pay_1", target, allowed)
    assert move.changes == {"failure_code": "x", "updated_at": at, "claimed_until": None}
    assert move.after.status == target and move.after.claimed_until is None and move.after.updated_at == at
    assert move.after.failure_code == "x"
    assert p.status == current and p.claimed_until is not None  # the record given is not changed
    if event_type is None:
        assert move.event is None
    else:
        assert move.event.type == event_type and move.event.subject == "pay_1" and move.event.user_id == "u_1"
        assert move.event.data["payment_id"] == "pay_1" and move.event.data["gateway_payment_id"] == "pi_1"


def test_a_captured_event_carries_the_capture_time() -> None:
    at = T + timedelta(seconds=9)
    move = PAYMENTS.move(payment(), "CAPTURED", at, captured_at=at)
    assert move.event.data["captured_at"].startswith("2026-11-21T10:00:09")


def test_a_move_to_a_status_nothing_moves_to_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot move to PENDING"):
        PAYMENTS.move(payment("PENDING_3DS"), "PENDING", T)


def test_a_refund_succeeding_emits_payment_refunded_only_for_a_captured_payment() -> None:
    r = refund(gateway_refund_id="re_g1", reason="partial")
    move = REFUNDS.move(r, "SUCCEEDED", T, payment("CAPTURED", gateway_payment_id="pi_1"))
    assert move.event.type == EventType.PAYMENT_REFUNDED and move.event.subject == "pay_1"
    assert move.event.data["refund_id"] == "re_1" and move.event.data["amount"] == 2000
    assert move.event.data["gateway_refund_id"] == "re_g1"
    # A late success's refund: the payment never credited the wallet, so nothing is taken back.
    assert REFUNDS.move(r, "SUCCEEDED", T, payment("EXPIRED")).event is None
    assert REFUNDS.move(r, "SUCCEEDED", T, payment("FAILED")).event is None
    assert REFUNDS.move(r, "FAILED", T, payment("CAPTURED")).event is None


@pytest.mark.parametrize(
    ("target", "event_type", "has_reason"),
    [("SETTLED", EventType.WITHDRAWAL_SETTLED, False), ("FAILED", EventType.WITHDRAWAL_FAILED, True),
     ("REVERSED", EventType.WITHDRAWAL_REVERSED, True)],
)
def test_a_withdrawal_move_emits_its_event_without_the_account_number(target, event_type, has_reason) -> None:
    w = withdrawal("SETTLED" if target == "REVERSED" else "PROCESSING", gateway_payout_id="pout_1")
    move = WITHDRAWALS.move(w, target, T, failure_reason="returned", utr="UTR1")
    data = move.event.data
    assert move.event.type == event_type and move.event.subject == "wd_1"
    assert data["beneficiary"] == {"name": "A Kumar", "account_last4": "9012"} and data["utr"] == "UTR1"
    assert f"{target.lower()}_at" in data and ("failure_reason" in data) is has_reason
    assert WITHDRAWALS.move(withdrawal(), "PROCESSING", T).event is None


# --- late successes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "attempt", "applies"),
    [(None, None, True), (None, "pay_B", True), ("pay_A", None, True), ("pay_A", "pay_A", True),
     ("pay_A", "pay_B", False)],
)
def test_a_failure_fails_only_the_attempt_it_belongs_to(recorded, attempt, applies) -> None:
    assert lc.failure_applies(payment("PENDING_3DS", gateway_payment_id=recorded), attempt) is applies


@pytest.mark.parametrize(
    ("status", "recorded", "attempt", "late"),
    [
        ("FAILED", "pi_1", "pi_1", True),
        ("FAILED", None, None, True),
        ("EXPIRED", "pi_1", "pi_2", True),
        ("CAPTURED", "pi_1", "pi_1", False),  # a duplicate of the capture we recorded
        ("CAPTURED", "pi_1", None, False),
        ("CAPTURED", None, "pi_1", False),
        ("CAPTURED", "pi_1", "pi_2", True),  # another attempt captured too
        ("PENDING", "pi_1", "pi_2", False),
        ("PENDING_3DS", "pi_1", "pi_1", False),
    ],
)
def test_is_late_success(status, recorded, attempt, late) -> None:
    assert lc.is_late_success(payment(status, gateway_payment_id=recorded), attempt) is late


def test_late_refund_id_is_deterministic_short_and_per_attempt() -> None:
    pid = "pay_01m8t54p7qnaw8nfx2hh2xqzhq"  # as ids.new_id makes them: 30 characters
    first = lc.late_refund_id(pid, "pi_3PabcDEF")
    assert first == lc.late_refund_id(pid, "pi_3PabcDEF")  # a second delivery finds the refund recorded
    assert first.startswith("re_") and len(first) <= 40
    assert lc.late_refund_id(pid, "pi_other") != first and lc.late_refund_id(pid, None) != first
    assert lc.late_refund_id("pay_other", "pi_3PabcDEF") != first
    assert len(lc.late_refund_id("pay_" + "x" * 80, "pi_1")) <= 40


def test_late_refund_code_names_what_closed_the_payment() -> None:
    assert lc.late_refund_code(payment("EXPIRED")) == "expired_then_refunded" == lc.EXPIRED_THEN_REFUNDED
    assert lc.late_refund_code(payment("FAILED")) == "failed_then_refunded" == lc.FAILED_THEN_REFUNDED


# --- walk -----------------------------------------------------------------------------------------


@pytest.fixture
def db():
    uow_factory, store = fake_uow_factory()
    return uow_factory, store, Clock()


def seed(db, *records) -> None:
    uow_factory, _, _ = db
    with uow_factory() as uow:
        for r in records:
            {Payment: uow.payments, Refund: uow.refunds, Withdrawal: uow.withdrawals}[type(r)].add(r)
        uow.commit()


def test_walk_moves_through_each_step_with_its_event(db) -> None:
    uow_factory, store, _ = db
    seed(db, withdrawal("REQUESTED"))
    with uow_factory() as uow:
        after, moved = walk(uow, WITHDRAWALS, withdrawal("REQUESTED"), "REVERSED", T, utr="UTR1",
                            failure_reason="returned")
        uow.commit()
    assert moved and after.status == "REVERSED" and store.withdrawals["wd_1"].status == "REVERSED"
    assert [e.type for e in store.outbox] == [EventType.WITHDRAWAL_SETTLED, EventType.WITHDRAWAL_REVERSED]


def test_walk_from_a_stale_copy_rereads_and_walks_on(db) -> None:
    uow_factory, store, _ = db
    seed(db, withdrawal("SETTLED", utr="UTR1"))
    with uow_factory() as uow:
        # The caller holds a REQUESTED copy; the row is SETTLED already.
        after, moved = walk(uow, WITHDRAWALS, withdrawal("REQUESTED"), "REVERSED", T, failure_reason="returned")
        uow.commit()
    assert moved and after.status == "REVERSED"
    assert [e.type for e in store.outbox] == [EventType.WITHDRAWAL_REVERSED]  # settled once, not twice


def test_walk_to_a_status_behind_is_a_no_op(db) -> None:
    uow_factory, store, _ = db
    seed(db, payment("FAILED"))
    with uow_factory() as uow:
        after, moved = walk(uow, PAYMENTS, payment("PENDING"), "CAPTURED", T)
        uow.commit()
    assert not moved and after.status == "FAILED" and store.outbox == []
    assert store.payments["pay_1"].status == "FAILED"


def test_walk_of_a_record_that_is_gone_is_an_unknown_object(db) -> None:
    uow_factory, _, _ = db
    with uow_factory() as uow, pytest.raises(machinery.UnknownObject):
        walk(uow, PAYMENTS, payment("PENDING"), "CAPTURED", T)


# --- sweep ----------------------------------------------------------------------------------------


def due_payments(db, n: int, **kw) -> list[str]:
    _, _, clock = db
    ids = [f"pay_{i}" for i in range(n)]
    seed(db, *(payment("PENDING", pid, next_attempt_at=clock.t - timedelta(seconds=n - i), **kw)
               for i, pid in enumerate(ids)))
    return ids


def fail_them(db, broken: set[str] | None = None, seen: list[str] | None = None):
    """A handler that fails the payment (FAILED), or raises for the ids in `broken`."""
    uow_factory, _, clock = db

    def handle(p: Payment) -> Payment:
        if seen is not None:
            seen.append(p.id)
        if broken and p.id in broken:
            raise RuntimeError(f"boom on {p.id}")
        with uow_factory() as uow:
            after = walk(uow, PAYMENTS, p, "FAILED", clock(), failure_code="not_submitted")[0]
            uow.commit()
        return after

    return handle


def run(db, handle, policy: SweepPolicy | None = None) -> SweepReport:
    uow_factory, _, clock = db
    return sweep("test", uow_factory, "payment", {"PENDING"}, handle, clock, policy or SweepPolicy())


def test_one_record_whose_handler_raises_does_not_stop_the_others(db) -> None:
    _, store, clock = db
    ids = due_payments(db, 3)
    seen: list[str] = []
    report = run(db, fail_them(db, broken={ids[0]}, seen=seen))
    assert report == SweepReport(claimed=3, finished=2, failed=1)
    assert seen == ids  # earliest due first; the first one's failure stopped nothing
    assert [store.payments[i].status for i in ids] == ["PENDING", "FAILED", "FAILED"]
    bad = store.payments[ids[0]]
    assert bad.attempts == 1 and bad.next_attempt_at == clock.t + timedelta(seconds=15)
    assert bad.last_error == f"RuntimeError: boom on {ids[0]}" and bad.claimed_until is None
    # Backing off: not due at once, then due again; a second failure doubles the wait.
    assert run(db, fail_them(db, broken={ids[0]})) == SweepReport()
    clock.advance(seconds=15)
    assert run(db, fail_them(db, broken={ids[0]})) == SweepReport(claimed=1, failed=1)
    bad = store.payments[ids[0]]
    assert bad.attempts == 2 and bad.next_attempt_at == clock.t + timedelta(seconds=30)
    clock.advance(seconds=30)
    assert run(db, fail_them(db)) == SweepReport(claimed=1, finished=1)
    assert store.payments[ids[0]].status == "FAILED"


def test_a_long_error_is_kept_short(db) -> None:
    _, store, _ = db
    (pid,) = due_payments(db, 1)

    def handle(p):
        raise ValueError("x" * 5000)

    assert run(db, handle).failed == 1
    assert len(store.payments[pid].last_error) == 2000


def test_claimed_and_not_yet_due_records_are_skipped(db) -> None:
    uow_factory, store, clock = db
    t = clock.t
    seed(
        db,
        payment("PENDING", "pay_held", next_attempt_at=t, claimed_until=t + timedelta(seconds=30)),
        payment("PENDING", "pay_held_till_now", next_attempt_at=t, claimed_until=t),
        payment("PENDING", "pay_lapsed", next_attempt_at=t, claimed_until=t - timedelta(seconds=1)),
        payment("PENDING", "pay_later", next_attempt_at=t + timedelta(seconds=1)),
        payment("PENDING", "pay_never", next_attempt_at=None),
        payment("PENDING_3DS", "pay_other_status", next_attempt_at=t),
        payment("PENDING", "pay_due", next_attempt_at=t),
    )
    seen: list[str] = []
    assert run(db, fail_them(db, seen=seen)) == SweepReport(claimed=2, finished=2)
    assert sorted(seen) == ["pay_due", "pay_lapsed"]
    assert store.payments["pay_held"].status == "PENDING" and store.payments["pay_later"].status == "PENDING"
    # The holder's claim lapses: the next sweep takes it.
    clock.advance(seconds=31)
    seen.clear()
    run(db, fail_them(db, seen=seen))
    assert sorted(seen) == ["pay_held", "pay_held_till_now", "pay_later"]


def test_a_batch_is_claimed_so_a_second_sweep_finds_nothing(db) -> None:
    _, store, _ = db
    ids = due_payments(db, 2)
    inner: list[SweepReport] = []

    def handle(p):
        if not inner:
            inner.append(run(db, fail_them(db)))  # another worker, while this one is mid-batch
        return fail_them(db)(p)

    assert run(db, handle).finished == 2
    assert inner == [SweepReport()]
    assert all(store.payments[i].status == "FAILED" for i in ids)


def test_a_batch_that_runs_out_of_lease_gives_the_rest_back(db, monkeypatch) -> None:
    _, store, clock = db
    ids = due_payments(db, 4, attempts=3, last_error="earlier")
    ticks = itertools.count()
    monkeypatch.setattr(machinery.time, "monotonic", lambda: 0.0)
    seen: list[str] = []

    def slow(p):
        # Each record takes 3 s of a 10 s lease; past half the lease the batch stops taking records.
        now = 3.0 * (next(ticks) + 1)
        monkeypatch.setattr(machinery.time, "monotonic", lambda: now)
        return fail_them(db, seen=seen)(p)

    report = run(db, slow, SweepPolicy(lease_seconds=10))
    assert report == SweepReport(claimed=4, finished=2, returned=2)
    assert seen == ids[:2]
    for pid in ids[2:]:
        back = store.payments[pid]
        # Given back as they were: due now, unclaimed, not counted as an attempt, their error kept.
        assert back.status == "PENDING" and back.claimed_until is None and back.next_attempt_at == clock.t
        assert back.attempts == 3 and back.last_error == "earlier"
    monkeypatch.setattr(machinery.time, "monotonic", lambda: 0.0)
    assert run(db, fail_them(db)) == SweepReport(claimed=2, finished=2)


def test_a_handler_that_leaves_the_record_open_is_not_finished(db) -> None:
    uow_factory, store, clock = db
    (pid,) = due_payments(db, 1)

    def ask_later(p):
        with uow_factory() as uow:
            uow.records.release("payment", p.id, next_attempt_at=clock() + timedelta(seconds=60), count_attempt=False)
            uow.commit()
        return p

    assert run(db, ask_later) == SweepReport(claimed=1)
    after = store.payments[pid]
    assert after.status == "PENDING" and after.attempts == 0 and after.claimed_until is None
    assert after.next_attempt_at == clock.t + timedelta(seconds=60) and after.last_error is None


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = SweepPolicy(backoff_base_seconds=15, backoff_max_seconds=100)
    assert [policy.backoff(n).total_seconds() for n in range(0, 6)] == [15, 15, 30, 60, 100, 100]
