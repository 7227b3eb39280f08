"""Settlement reconciliation on real parts: MariaDB, the gateway sandbox through the official SDKs.

One day (2026-11-20 UTC) per gateway, with matched charges and refunds (made through our adapters, as the
service would), a pair that straddles midnight, and three differences injected the way they happen: a
charge made at the gateway directly (as in the Dashboard), a payment marked CAPTURED here that the gateway
never charged, and a refund made at the gateway directly. `reconcile-day` must report those three and
nothing else, record its run, write its report and exit 1.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import razorpay
import requests
import stripe
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from config import load_settings
from gateway_sandbox import SandboxConfig
from gateway_sandbox.server import SandboxServer
from payment_service.adapters import migrate
from payment_service.adapters.orm import PaymentRow, RefundRow
from payment_service.adapters.reconciliation_metrics import ReconciliationCollector
from payment_service.adapters.reconciliation_store import SqlRunLog, SqlSettlementLedger, write_report
from payment_service.bootstrap import bootstrap, make_engine
from payment_service.cli import main
from payment_service.gateways.base import ChargeRequest, ChargeStatus
from payment_service.gateways.razorpay_gateway import RazorpayGateway
from payment_service.gateways.stripe_gateway import StripeGateway
from payment_service.services import reconciliation
from payment_service.worker.jobs import reconcile_previous_day

pytestmark = pytest.mark.integration

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, tzinfo=UTC)
STRIPE_KEY, RZP_ID, RZP_SECRET = "sk_test_reconcile", "rzp_test_reconcile", "reconcile_secret"


@pytest.fixture(scope="module")
def engine(fresh_database_url: str) -> Iterator[Engine]:
    migrate.upgrade(fresh_database_url)
    eng = make_engine(fresh_database_url)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig()) as s:
        yield s


@pytest.fixture(scope="module")
def stripe_gw(server: SandboxServer) -> StripeGateway:
    return StripeGateway(STRIPE_KEY, "whsec_x", api_base=server.stripe_api_base)


@pytest.fixture(scope="module")
def razorpay_gw(server: SandboxServer) -> RazorpayGateway:
    return RazorpayGateway(RZP_ID, RZP_SECRET, "whsec_x", api_base=server.razorpay_api_base)


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def backdate(server: SandboxServer, gateway: str, object_id: str, when: datetime) -> None:
    """The sandbox's admin API: the object was made at `when`."""
    field = "created" if gateway == "stripe" else "created_at"
    r = requests.post(f"{server.url}/{gateway}/_admin/objects/{object_id}/{field}",
                      json={field: int(when.timestamp())}, timeout=10)
    assert r.status_code == 200, r.text


def add_payment(engine: Engine, gateway: str, pay_id: str, amount: int, currency: str, gpid: str | None,
                when: datetime, status: str = "CAPTURED") -> None:
    with engine.begin() as conn:
        conn.execute(insert(PaymentRow.__table__), [{  # type: ignore[arg-type]
            "id": pay_id, "user_id": "u_rec", "amount": amount, "currency": currency, "gateway": gateway,
            "gateway_payment_id": gpid, "status": status, "created_at": when, "updated_at": when,
            "captured_at": when if status == "CAPTURED" else None, "refunded_amount": 0,
        }])


def add_refund(engine: Engine, refund_id: str, pay_id: str, amount: int, currency: str, grid: str,
               when: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(insert(RefundRow.__table__), [{  # type: ignore[arg-type]
            "id": refund_id, "payment_id": pay_id, "user_id": "u_rec", "amount": amount, "currency": currency,
            "status": "SUCCEEDED", "gateway_refund_id": grid, "created_at": when, "updated_at": when,
        }])


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def charge_through_adapter(gw: Any, engine: Engine, server: SandboxServer, amount: int, currency: str, token: str,
                           ours_at: datetime, theirs_at: datetime) -> tuple[str, str]:
    pay_id = new_id("pay")
    result = gw.charge(ChargeRequest(reference=pay_id, amount=amount, currency=currency,
                                     idempotency_key=f"{pay_id}:charge", token=token))
    assert result.status is ChargeStatus.SUCCEEDED and result.gateway_payment_id
    backdate(server, gw.name, result.gateway_payment_id, theirs_at)
    add_payment(engine, gw.name, pay_id, amount, currency, result.gateway_payment_id, ours_at)
    return pay_id, result.gateway_payment_id


def refund_through_adapter(gw: Any, engine: Engine, server: SandboxServer, pay_id: str, gpid: str, amount: int,
                           currency: str, when: datetime) -> str:
    refund_id = new_id("re")
    result = gw.refund(gpid, amount, currency, reference=refund_id, idempotency_key=f"{refund_id}:refund")
    backdate(server, gw.name, result.gateway_refund_id, when)
    add_refund(engine, refund_id, pay_id, amount, currency, result.gateway_refund_id, when)
    return refund_id


def seed_matched_day(gw: Any, engine: Engine, server: SandboxServer, currency: str, token: str) -> dict[str, Any]:
    """Three matched charges, one matched refund, and a pair across midnight (ours 23:59:59 on the day,
    the gateway's 00:00:01 the next day): nothing of this may be reported."""
    paid = [charge_through_adapter(gw, engine, server, 5000 + i * 10, currency, token, at(1 + i), at(1 + i))
            for i in range(3)]
    refund_through_adapter(gw, engine, server, paid[0][0], paid[0][1], 1000, currency, at(5))
    late = charge_through_adapter(gw, engine, server, 7000, currency, token, at(24) - timedelta(seconds=1),
                                  at(24) + timedelta(seconds=1))
    return {"paid": paid, "late": late}


def expected_kinds(report: reconciliation.DayReport) -> list[tuple[str, str | None]]:
    return sorted((d.kind, d.gateway_payment_id) for d in report.differences)


def test_stripe_day_reports_exactly_the_injected_differences(engine, server, stripe_gw, tmp_path: Path) -> None:
    seeded = seed_matched_day(stripe_gw, engine, server, "USD", "pm_card_visa")
    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": server.stripe_api_base})
    # 1. A charge made at Stripe directly (no payment of ours behind it).
    direct = client.v1.payment_intents.create({"amount": 4321, "currency": "usd", "payment_method": "pm_card_visa",
                                               "payment_method_types": ["card"], "confirm": True})
    assert direct.status == "succeeded"
    backdate(server, "stripe", direct.id, at(9))
    # 2. A payment CAPTURED here that Stripe never charged.
    ghost = new_id("pay")
    add_payment(engine, "stripe", ghost, 2500, "USD", "pi_" + uuid.uuid4().hex[:24], at(10))
    # 3. A refund made at Stripe directly, of a payment we did take.
    refunded_there = client.v1.refunds.create({"payment_intent": seeded["paid"][1][1], "amount": 700})
    backdate(server, "stripe", refunded_there.id, at(11))

    runs = SqlRunLog(engine)
    report = reconciliation.run_day(stripe_gw, SqlSettlementLedger(engine), runs, DAY, lambda: datetime.now(UTC),
                                    write_report=lambda r: write_report(tmp_path, r))
    assert report is not None
    kinds = sorted(d.kind for d in report.differences)
    assert kinds == ["captured_not_charged", "charged_not_captured", "refund_at_gateway_only"], report.summary()
    by_kind = {d.kind: d for d in report.differences}
    assert by_kind["charged_not_captured"].gateway_payment_id == direct.id
    assert by_kind["charged_not_captured"].theirs == {"status": "succeeded", "amount": 4321, "currency": "USD"}
    assert by_kind["captured_not_charged"].payment_id == ghost
    assert by_kind["refund_at_gateway_only"].gateway_refund_id == refunded_there.id
    assert by_kind["refund_at_gateway_only"].payment_id == seeded["paid"][1][0]
    assert (report.gateway_charges, report.our_payments, report.gateway_refunds, report.our_refunds) == (4, 5, 2, 1)

    row = runs.runs(DAY, "stripe")[0]
    assert row["status"] == "DIFFERENCES" and row["differences"] == 3 and row["finished_at"] is not None
    lines = [json.loads(line) for line in Path(row["report_location"]).read_text().splitlines()]
    assert sorted(line["kind"] for line in lines) == kinds
    assert "3 DIFFERENCE(S)" in (tmp_path / "reconcile-stripe-2026-11-20.txt").read_text()

    # The day before and the day after hold only the midnight pair's halves: matched across midnight.
    after = reconciliation.reconcile_day(stripe_gw, SqlSettlementLedger(engine), DAY + timedelta(days=1),
                                         lambda: datetime.now(UTC))
    assert after.clean and after.gateway_charges == 1, after.summary()

    # The count of differences is on /metrics (read from the runs table at scrape time).
    families = {m.name: m for m in ReconciliationCollector(lambda: engine).collect()}
    samples = {s.labels["gateway"]: s.value for s in families["payment_reconciliation_differences"].samples}
    assert samples["stripe"] == 3


def test_razorpay_day_reports_exactly_the_injected_differences(engine, server, razorpay_gw, tmp_path: Path) -> None:
    seeded = seed_matched_day(razorpay_gw, engine, server, "INR", "tok_rzp_success")
    client = razorpay.Client(auth=(RZP_ID, RZP_SECRET), base_url=server.razorpay_api_base)
    # 1. A payment taken at Razorpay directly.
    order = client.order.create({"amount": 43210, "currency": "INR", "payment_capture": 1})
    direct = client.payment.createPaymentJson({"amount": 43210, "currency": "INR", "order_id": order["id"],
                                               "method": "card", "token": "tok_rzp_success"})
    direct_id = direct["razorpay_payment_id"]
    assert client.payment.fetch(direct_id)["status"] == "captured"
    backdate(server, "razorpay", direct_id, at(9))
    # 2. A payment CAPTURED here that Razorpay never charged.
    ghost = new_id("pay")
    add_payment(engine, "razorpay", ghost, 25000, "INR", "pay_" + uuid.uuid4().hex[:14], at(10))
    # 3. A refund made at Razorpay directly.
    refund = client.payment.refund(seeded["paid"][2][1], {"amount": 700})
    backdate(server, "razorpay", refund["id"], at(11))

    result = CliRunner().invoke(main, ["reconcile-day", "--date", DAY.isoformat(), "--gateway", "razorpay",
                                       "--out", str(tmp_path)], env=_env(engine, server))
    assert result.exit_code == 1, result.output
    assert "3 DIFFERENCE(S)" in result.output
    lines = [json.loads(line) for line in (tmp_path / "reconcile-razorpay-2026-11-20.jsonl").read_text().splitlines()]
    found = sorted((line["kind"], line["gateway_payment_id"] if line["kind"] != "refund_at_gateway_only"
                    else line["gateway_refund_id"]) for line in lines)
    ghost_gpid = next(line["gateway_payment_id"] for line in lines if line["payment_id"] == ghost)
    assert found == sorted([("charged_not_captured", direct_id), ("captured_not_charged", ghost_gpid),
                            ("refund_at_gateway_only", refund["id"])]), result.output
    row = SqlRunLog(engine).runs(DAY, "razorpay")[0]
    assert (row["status"], row["differences"], row["trigger"]) == ("DIFFERENCES", 3, "cli")


def test_clean_day_exits_zero_and_nightly_run_is_claimed_once(engine, server, stripe_gw, tmp_path: Path) -> None:
    day = date(2026, 11, 10)
    start = datetime(2026, 11, 10, tzinfo=UTC)
    for i in range(3):
        charge_through_adapter(stripe_gw, engine, server, 1000 + i, "USD", "pm_card_visa",
                               start + timedelta(hours=i), start + timedelta(hours=i))
    result = CliRunner().invoke(main, ["reconcile-day", "--date", day.isoformat(), "--gateway", "stripe",
                                       "--out", str(tmp_path)], env=_env(engine, server))
    assert result.exit_code == 0, result.output
    assert "CLEAN" in result.output
    assert (tmp_path / "reconcile-stripe-2026-11-10.jsonl").read_text() == ""

    runs, ledger = SqlRunLog(engine), SqlSettlementLedger(engine)

    def nightly() -> Any:
        return reconciliation.run_day(stripe_gw, ledger, runs, day, lambda: datetime.now(UTC), trigger="nightly",
                                      exclusive=True)

    first = nightly()
    assert first is not None and first.clean
    assert nightly() is None  # done already: a second worker (or tick) does not run it again
    assert [r["trigger"] for r in runs.runs(day, "stripe")] == ["nightly", "cli"]


def test_worker_reconciles_the_previous_day_once(engine, server, stripe_gw, tmp_path: Path) -> None:
    day = date(2026, 11, 12)
    start = datetime(2026, 11, 12, tzinfo=UTC)
    charge_through_adapter(stripe_gw, engine, server, 1500, "USD", "pm_card_visa", start + timedelta(hours=3),
                           start + timedelta(hours=3))
    settings = load_settings(_env(engine, server), RECONCILE_REPORT_DIR=str(tmp_path), RECONCILE_DAY_GATEWAYS="stripe")
    container = bootstrap(settings)
    try:
        too_early = datetime(2026, 11, 13, 1, tzinfo=UTC)  # within RECONCILE_DAY_DELAY_SECONDS of midnight
        assert reconcile_previous_day(container, now=too_early) == {"stripe": 0}  # that is the 11th: clean, empty
        ticks = [reconcile_previous_day(container, now=datetime(2026, 11, 13, 3, tzinfo=UTC)) for _ in range(2)]
    finally:
        container.close()
    assert ticks == [{"stripe": 0}, {"stripe": None}]  # the 12th, once
    assert [r["trigger"] for r in SqlRunLog(engine).runs(day, "stripe")] == ["nightly"]
    assert (tmp_path / "reconcile-stripe-2026-11-12.txt").read_text().startswith(
        "reconciliation stripe 2026-11-12: CLEAN")


def test_workers_racing_for_the_nightly_run_start_it_once(engine) -> None:
    runs, day, threads = SqlRunLog(engine), date(2026, 11, 5), 8
    barrier = threading.Barrier(threads)
    got: list[int | None] = [None] * threads

    def claim(i: int) -> None:
        barrier.wait()
        got[i] = runs.start(day, "razorpay", "nightly", datetime.now(UTC), exclusive=True)

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    assert sum(1 for g in got if g is not None) == 1, got
    assert len(runs.runs(day, "razorpay")) == 1
    run_id = next(g for g in got if g is not None)
    runs.fail(run_id, "GatewayUnavailableError: timeout", datetime.now(UTC))
    # A failed run is taken over by the next claim (one of them), keeping its row.
    again = [runs.start(day, "razorpay", "nightly", datetime.now(UTC), exclusive=True) for _ in range(2)]
    assert again == [run_id, None]


def _env(engine: Engine, server: SandboxServer) -> dict[str, str]:
    return {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": server.stripe_api_base,
        "RAZORPAY_KEY_ID": RZP_ID, "RAZORPAY_KEY_SECRET": RZP_SECRET, "RAZORPAY_API_BASE": server.razorpay_api_base,
        "LOG_LEVEL": "WARNING",
    }
