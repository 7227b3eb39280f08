"""Benchmark: settlement reconciliation of a clean day of 10,000 payments per gateway (issue 13).

Not a test: it prints figures. It starts its own MariaDB (or uses TEST_DATABASE_URL) and the gateway
sandbox as a process (`payment-service sandbox`, as in production-like runs), seeds one day quickly on
both sides (the sandbox's admin bulk endpoints; a bulk INSERT into our tables), then times
`reconcile-day` for that day through the real adapters (official SDKs, every page of 100) and the real
storage, and checks that it reports nothing.

    .venv/bin/python bench/reconcile_day.py [--payments 10000] [--refund-share 0.05]
                                            [--gateway stripe|razorpay|both]

Target (issue 13): a clean day of 10,000 payments in under a minute, no difference reported.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway_sandbox.server import free_port  # noqa: E402
from localparts.mariadb import MariaDBServer, create_database_at, drop_database_at  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.adapters.orm import PaymentRow, RefundRow  # noqa: E402
from payment_service.adapters.reconciliation_store import SqlRunLog, SqlSettlementLedger, write_report  # noqa: E402
from payment_service.bootstrap import make_engine  # noqa: E402
from payment_service.gateways.razorpay_gateway import RazorpayGateway  # noqa: E402
from payment_service.gateways.stripe_gateway import StripeGateway  # noqa: E402
from payment_service.services import reconciliation  # noqa: E402

DAY = date(2026, 11, 20)
START = datetime(2026, 11, 20, tzinfo=UTC)
BATCH = 1000


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = str(Path(sys.executable).with_name("payment-service"))
    proc = subprocess.Popen([exe, "sandbox", "--port", str(port)], stdout=subprocess.DEVNULL,  # noqa: S603
                            stderr=subprocess.DEVNULL, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the sandbox did not start")


def plan(n: int, refund_share: float, currency: str, rng: random.Random) -> list[dict[str, Any]]:
    """n payments spread over the day, each with our ids; refund_share of them partly refunded."""
    out = []
    for _ in range(n):
        created = START + timedelta(seconds=rng.randrange(86_400))
        amount = rng.randrange(100, 500_000) * 10
        item: dict[str, Any] = {"pay_id": "pay_" + uuid.uuid4().hex[:24], "amount": amount, "currency": currency,
                                "created": created, "refunds": []}
        if rng.random() < refund_share:
            item["refunds"].append({"re_id": "re_" + uuid.uuid4().hex[:24], "amount": amount // 2,
                                    "created": min(created + timedelta(hours=1), START + timedelta(seconds=86_399))})
        out.append(item)
    return out


def seed_gateway(url: str, gateway: str, items: list[dict[str, Any]]) -> None:
    """Both sides' ids: the sandbox makes the charges (and refunds) with our ids in metadata / notes."""
    for i in range(0, len(items), BATCH):
        chunk = items[i : i + BATCH]
        if gateway == "stripe":
            body = [{"amount": it["amount"], "currency": it["currency"].lower(),
                     "metadata": {"payment_id": it["pay_id"]}, "created": int(it["created"].timestamp()),
                     "refunds": [{"amount": r["amount"], "metadata": {"refund_id": r["re_id"]},
                                  "created": int(r["created"].timestamp())} for r in it["refunds"]]}
                    for it in chunk]
            answer = requests.post(f"{url}/stripe/_admin/bulk/payment_intents", json={"items": body}, timeout=120)
        else:
            body = [{"amount": it["amount"], "currency": it["currency"], "receipt": it["pay_id"],
                     "notes": {"payment_id": it["pay_id"]}, "created_at": int(it["created"].timestamp()),
                     "refunds": [{"amount": r["amount"], "receipt": r["re_id"], "notes": {"refund_id": r["re_id"]},
                                  "created_at": int(r["created"].timestamp())} for r in it["refunds"]]}
                    for it in chunk]
            answer = requests.post(f"{url}/razorpay/_admin/bulk/payments", json={"items": body}, timeout=120)
        answer.raise_for_status()
        for it, made in zip(chunk, answer.json()["items"], strict=True):
            it["gpid"] = made["id"]
            for r, rid in zip(it["refunds"], made["refunds"], strict=True):
                r["grid"] = rid


def seed_ours(engine: Engine, gateway: str, items: list[dict[str, Any]]) -> None:
    payments = [{"id": it["pay_id"], "user_id": f"u_{i % 997}", "amount": it["amount"], "currency": it["currency"],
                 "gateway": gateway, "gateway_payment_id": it["gpid"], "status": "CAPTURED",
                 "created_at": it["created"], "updated_at": it["created"], "captured_at": it["created"],
                 "refunded_amount": sum(r["amount"] for r in it["refunds"])} for i, it in enumerate(items)]
    refunds = [{"id": r["re_id"], "payment_id": it["pay_id"], "user_id": "u_bench", "amount": r["amount"],
                "currency": it["currency"], "status": "SUCCEEDED", "gateway_refund_id": r["grid"],
                "created_at": r["created"], "updated_at": r["created"]} for it in items for r in it["refunds"]]
    with engine.begin() as conn:
        for i in range(0, len(payments), BATCH):
            conn.execute(insert(PaymentRow.__table__), payments[i : i + BATCH])  # type: ignore[arg-type]
        for i in range(0, len(refunds), BATCH):
            conn.execute(insert(RefundRow.__table__), refunds[i : i + BATCH])  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=10_000)
    parser.add_argument("--refund-share", type=float, default=0.05)
    parser.add_argument("--gateway", choices=["stripe", "razorpay", "both"], default="both")
    args = parser.parse_args()
    gateways = ["stripe", "razorpay"] if args.gateway == "both" else [args.gateway]

    db_server = None
    base_url = os.environ.get("TEST_DATABASE_URL")
    if not base_url:
        db_server = MariaDBServer(durable=False).start()
        base_url = db_server.url
    name = f"bench_reconcile_{uuid.uuid4().hex[:8]}"
    url = create_database_at(base_url, name)
    sandbox, sandbox_url = start_sandbox()
    engine = make_engine(url)
    failed = False
    try:
        migrate.upgrade(url)
        rng = random.Random(13)  # noqa: S311 - test data
        adapters = {
            "stripe": StripeGateway("sk_test_bench", "whsec_x", api_base=sandbox_url + "/stripe"),
            "razorpay": RazorpayGateway("rzp_test_bench", "bench_secret", "whsec_x",
                                        api_base=sandbox_url + "/razorpay"),
        }
        print(f"reconcile-day bench: {args.payments:,} payments per gateway on {DAY}, "
              f"{args.refund_share:.0%} of them refunded in part")
        for gateway in gateways:
            items = plan(args.payments, args.refund_share, "USD" if gateway == "stripe" else "INR", rng)
            t0 = time.perf_counter()
            seed_gateway(sandbox_url, gateway, items)
            seed_ours(engine, gateway, items)
            seeded = time.perf_counter() - t0
            out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / name
            t0 = time.perf_counter()
            report = reconciliation.run_day(
                adapters[gateway], SqlSettlementLedger(engine), SqlRunLog(engine), DAY, lambda: datetime.now(UTC),
                write_report=lambda r, d=out_dir: write_report(d, r),
            )
            elapsed = time.perf_counter() - t0
            assert report is not None
            refunds = sum(len(it["refunds"]) for it in items)
            print(f"  {gateway:8s}: reconciled {report.gateway_charges:,} charges and {report.gateway_refunds:,} "
                  f"refunds against {report.our_payments:,} payments and {report.our_refunds:,} refunds of ours "
                  f"in {elapsed:.2f} s (seeded {args.payments:,} + {refunds:,} in {seeded:.1f} s); "
                  f"differences: {len(report.differences)}  "
                  f"[{'OK' if report.clean and elapsed < 60 else 'MISSED'}: target clean, < 60 s]")
            failed = failed or not report.clean or elapsed >= 60
            if not report.clean:
                print(report.summary())
    finally:
        engine.dispose()
        sandbox.send_signal(signal.SIGINT)  # gunicorn: quick shutdown (TERM waits for its graceful timeout)
        try:
            sandbox.wait(30)
        except subprocess.TimeoutExpired:
            sandbox.kill()
            sandbox.wait()
        drop_database_at(base_url, name)
        if db_server is not None:
            db_server.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
