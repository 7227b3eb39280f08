"""Benchmark: `payment-service audit verify` over 100,000 audit rows (issue 12's target: under 10 s).

Not a test: it prints figures. It starts its own MariaDB (durable; or uses TEST_DATABASE_URL), makes a
fresh database, writes N audit rows (bulk inserts, like many transactions' rows would be), seals them
(the worker's job, timed), then runs the CLI command `payment-service audit verify` as a process (the
whole command: start-up, reading, HMAC) and prints how long it took. Then it changes one row in the
middle and runs verify again, which must fail and name that row.

Run:

    .venv/bin/python bench/audit_verify.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, text  # noqa: E402

from config.settings import DEV_AUDIT_HMAC_KEY  # noqa: E402
from localparts.mariadb import MariaDBServer, create_database_at  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.adapters.audit_store import SqlAuditStore  # noqa: E402
from payment_service.adapters.orm import AuditEventRow  # noqa: E402
from payment_service.bootstrap import make_engine  # noqa: E402
from payment_service.services.audit import seal_pending  # noqa: E402
from tests.support.processes import VENV_BIN  # noqa: E402


def fill(engine, rows: int) -> float:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    actors = ["user:u_1", "client:cli_01jxyzabc", "gateway:stripe", "job:expire_pending_3ds"]
    t0 = time.perf_counter()
    batch = 5000
    with engine.begin() as conn:
        for first in range(0, rows, batch):
            conn.execute(insert(AuditEventRow), [
                {"occurred_at": start + timedelta(milliseconds=i), "actor": actors[i % 4],
                 "actor_key_prefix": "psk_abcdefgh" if i % 4 == 1 else None, "action": "payment.captured",
                 "resource_type": "payment", "resource_id": f"pay_{i:026d}", "outcome": "succeeded",
                 "http_status": None, "request_id": f"req_{i:024x}", "source": "10.0.0.1",
                 "summary": f"payment pay_{i:026d} -> CAPTURED"}
                for i in range(first, min(rows, first + batch))
            ])
    return time.perf_counter() - t0


def verify(url: str) -> tuple[int, float, str]:
    env = {**os.environ, "DATABASE_URL": url, "AUDIT_HMAC_KEY": DEV_AUDIT_HMAC_KEY, "LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(VENV_BIN / "payment-service"), "audit", "verify", "--no-seal"], env=env,
                          capture_output=True, text=True, check=False)
    return proc.returncode, time.perf_counter() - t0, (proc.stdout + proc.stderr).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    server = None
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        server = MariaDBServer(durable=True).start()
        base = server.url
    try:
        url = create_database_at(base, f"bench_audit_{uuid.uuid4().hex[:8]}")
        migrate.upgrade(url)
        engine = make_engine(url)
        took_fill = fill(engine, args.rows)
        print(f"wrote {args.rows:,} audit rows in {took_fill:.1f} s")
        t0 = time.perf_counter()
        sealed = seal_pending(SqlAuditStore(engine), DEV_AUDIT_HMAC_KEY.encode())
        took_seal = time.perf_counter() - t0
        print(f"sealed {sealed:,} rows in {took_seal:.1f} s ({sealed / took_seal:,.0f} rows/s, the worker's batches)")
        code, took, out = verify(url)
        print(f"`payment-service audit verify` on {args.rows:,} rows: {took:.2f} s, exit {code} (target < 10 s)")
        print(f"  {out}")
        with engine.begin() as conn:
            victim = conn.execute(text("SELECT id, seq FROM audit_events WHERE seq = :s"),
                                  {"s": args.rows // 2}).one()
            conn.execute(text("UPDATE audit_events SET actor = 'user:someone_else' WHERE id = :i"), {"i": victim.id})
        code, took, out = verify(url)
        print(f"after changing row {victim.id} (seq {victim.seq}): {took:.2f} s, exit {code}")
        print(f"  {out}")
        engine.dispose()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
