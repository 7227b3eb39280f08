"""Settlement reconciliation with fakes: each kind of difference, what is not one, and the run's record."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from payment_service.gateways.base import (
    ChargeStatus,
    GatewayUnavailableError,
    RefundStatus,
    SettledCharge,
    SettledRefund,
)
from payment_service.services import reconciliation as rec
from payment_service.services.reconciliation import OurPayment, OurRefund
from tests.unit.fakes import FakeLedger, FakeRunLog, FakeSettlementGateway

DAY = date(2026, 11, 20)
T0 = datetime(2026, 11, 20, tzinfo=UTC)


def now() -> datetime:
    return datetime(2026, 11, 21, 3, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def charge(gid: str, ref: str | None, amount: int = 5000, when: datetime | None = None, currency: str = "USD",
           status: ChargeStatus = ChargeStatus.SUCCEEDED) -> SettledCharge:
    return SettledCharge(gid, status, amount, currency, when or at(1), ref, status.value)


def payment(pid: str, gid: str | None, amount: int = 5000, when: datetime | None = None, status: str = "CAPTURED",
            currency: str = "USD") -> OurPayment:
    return OurPayment(pid, "stripe", status, amount, currency, gid, when or at(1))


def g_refund(grid: str, gid: str, ref: str | None, amount: int = 1000, when: datetime | None = None,
             status: RefundStatus = RefundStatus.SUCCEEDED) -> SettledRefund:
    return SettledRefund(grid, gid, status, amount, "USD", when or at(2), ref, status.value)


def o_refund(rid: str, pid: str, grid: str | None, charge_id: str, amount: int = 1000, status: str = "SUCCEEDED",
             late: bool = False, when: datetime | None = None) -> OurRefund:
    return OurRefund(rid, pid, "stripe", status, amount, "USD", grid, charge_id, late, when or at(2))


@pytest.fixture
def world() -> tuple[FakeSettlementGateway, FakeLedger]:
    gw, ledger = FakeSettlementGateway(), FakeLedger()
    for i in range(3):
        gw.charges.append(charge(f"pi_{i}", f"pay_{i}"))
        ledger.payments.append(payment(f"pay_{i}", f"pi_{i}"))
    gw.refunds.append(g_refund("re_g0", "pi_0", "re_0"))
    ledger.refunds.append(o_refund("re_0", "pay_0", "re_g0", "pi_0"))
    return gw, ledger


def kinds(report: rec.DayReport) -> list[str]:
    return sorted(d.kind for d in report.differences)


def test_matched_day_is_clean(world) -> None:
    gw, ledger = world
    report = rec.reconcile_day(gw, ledger, DAY, now)
    assert report.clean, report.summary()
    assert (report.gateway_charges, report.our_payments, report.gateway_refunds, report.our_refunds) == (3, 3, 1, 1)
    assert gw.lookups == []  # nothing looked up one by one on a day that matches


def test_each_injected_difference_is_reported_and_nothing_else(world) -> None:
    gw, ledger = world
    gw.charges.append(charge("pi_dash", None, 4321, at(9)))  # made in the Dashboard
    ledger.payments.append(payment("pay_ghost", "pi_ghost", 2500, at(10)))  # CAPTURED here, never charged
    gw.refunds.append(g_refund("re_dash", "pi_1", None, 700, at(11)))  # refunded in the Dashboard
    report = rec.reconcile_day(gw, ledger, DAY, now)
    assert kinds(report) == ["captured_not_charged", "charged_not_captured", "refund_at_gateway_only"]
    by = {d.kind: d for d in report.differences}
    assert by["charged_not_captured"].gateway_payment_id == "pi_dash"
    assert "no reference of ours" in by["charged_not_captured"].detail
    assert by["captured_not_charged"].payment_id == "pay_ghost" and by["captured_not_charged"].theirs is None
    assert by["refund_at_gateway_only"].payment_id == "pay_1"
    assert "3 DIFFERENCE(S)" in report.summary()


def test_amount_and_currency_differences(world) -> None:
    gw, ledger = world
    gw.charges[1] = charge("pi_1", "pay_1", 5001)
    gw.charges[2] = charge("pi_2", "pay_2", currency="EUR")
    gw.refunds[0] = g_refund("re_g0", "pi_0", "re_0", amount=999)
    report = rec.reconcile_day(gw, ledger, DAY, now)
    assert kinds(report) == ["amount_mismatch", "amount_mismatch", "currency_mismatch"]
    refund_diff = next(d for d in report.differences if d.refund_id)
    assert refund_diff.ours["amount"] == 1000 and refund_diff.theirs["amount"] == 999


def test_status_differences_count_as_one_side_only(world) -> None:
    gw, ledger = world
    ledger.payments[0] = payment("pay_0", "pi_0", status="FAILED")  # charged there, FAILED here
    gw.charges[1] = charge("pi_1", "pay_1", status=ChargeStatus.CANCELED)  # CAPTURED here, canceled there
    ledger.refunds.append(o_refund("re_9", "pay_2", "re_g9", "pi_2"))  # SUCCEEDED here, unknown there
    report = rec.reconcile_day(gw, ledger, DAY, now)
    assert kinds(report) == ["captured_not_charged", "charged_not_captured", "refund_here_only"]
    assert next(d for d in report.differences if d.kind == "charged_not_captured").detail.endswith("FAILED here")


def test_pairs_across_midnight_are_matched_by_looking_them_up(world) -> None:
    gw, ledger = world
    # Ours at 23:59:59, the gateway's at 00:00:01 the next day: each day holds one half.
    ledger.payments.append(payment("pay_late", "pi_late", when=at(24) - timedelta(seconds=1)))
    gw.charges.append(charge("pi_late", "pay_late", when=at(24) + timedelta(seconds=1)))
    ledger.refunds.append(o_refund("re_late", "pay_1", "re_glate", "pi_1", when=at(24) - timedelta(seconds=1)))
    gw.refunds.append(g_refund("re_glate", "pi_1", "re_late", when=at(24) + timedelta(seconds=2)))
    day = rec.reconcile_day(gw, ledger, DAY, now)
    after = rec.reconcile_day(gw, ledger, DAY + timedelta(days=1), now)
    assert day.clean and after.clean, (day.summary(), after.summary())
    assert day.looked_up == 2 and after.looked_up == 2


def test_a_late_success_we_refunded_is_no_difference(world) -> None:
    gw, ledger = world
    ledger.payments.append(payment("pay_x", "pi_x1", status="EXPIRED"))
    gw.charges.append(charge("pi_x1", "pay_x"))  # succeeded after we expired it ...
    ledger.refunds.append(o_refund("re_x", "pay_x", "re_gx", "pi_x1", amount=5000, late=True))  # ... given back
    gw.refunds.append(g_refund("re_gx", "pi_x1", "re_x", amount=5000))
    assert rec.reconcile_day(gw, ledger, DAY, now).clean


def test_a_second_attempt_that_took_money_is_reported() -> None:
    gw, ledger = FakeSettlementGateway(), FakeLedger()
    ledger.payments.append(payment("pay_a", "pi_a2"))
    gw.charges += [charge("pi_a1", "pay_a"), charge("pi_a2", "pay_a")]
    report = rec.reconcile_day(gw, ledger, DAY, now)
    assert kinds(report) == ["charged_not_captured"]
    assert "another attempt of pay_a" in report.differences[0].detail


def test_pending_refund_without_gateway_refund_is_in_flight_not_a_difference(world) -> None:
    gw, ledger = world
    ledger.refunds.append(o_refund("re_p", "pay_2", None, "pi_2", status="PENDING"))
    assert rec.reconcile_day(gw, ledger, DAY, now).clean


def test_run_is_recorded_once_and_failures_are_recorded_then_raised(world) -> None:
    gw, ledger = world
    runs = FakeRunLog()
    written: list[str] = []
    report = rec.run_day(gw, ledger, runs, DAY, now, write_report=lambda r: written.append(r.gateway) or "/r.jsonl",
                         trigger="nightly", exclusive=True)
    assert report is not None and report.clean and written == ["stripe"]
    assert runs.rows[1]["status"] == "CLEAN" and runs.rows[1]["report_location"] == "/r.jsonl"
    assert rec.run_day(gw, ledger, runs, DAY, now, trigger="nightly", exclusive=True) is None

    gw.unavailable = True
    with pytest.raises(GatewayUnavailableError):
        rec.run_day(gw, ledger, runs, DAY + timedelta(days=1), now, trigger="nightly", exclusive=True)
    assert runs.rows[2]["status"] == "FAILED" and "GatewayUnavailableError" in runs.rows[2]["error"]
    gw.unavailable = False  # the next tick takes the failed run over
    assert rec.run_day(gw, ledger, runs, DAY + timedelta(days=1), now, trigger="nightly", exclusive=True) is not None
    assert runs.rows[2]["status"] == "CLEAN"
