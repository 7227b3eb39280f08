"""Benchmark: captured top-ups per second and latency at rising concurrency, against the raw-SQL ceiling.

Not a test: it prints figures. It starts its own MariaDB (or uses TEST_DATABASE_URL), the gateway
sandbox as its own process at zero latency, and `payment-service serve`; then, for each
concurrency level, drives POST /payments/topup for a fixed time. In the same run it issues the
same SQL statements that one top-up makes, directly with PyMySQL from as many clients, to give
the ceiling the database allows. Run:

    .venv/bin/python bench/topup.py [--seconds 8] [--levels 1,2,4,8,16,32] [--workers 2 --threads 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt
import pymysql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.settings import DEV_JWT_SECRET  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.gateways.sandbox.server import free_port  # noqa: E402
from payment_service.localparts.mariadb import MariaDBServer  # noqa: E402
from tests.support.processes import VENV_BIN, ServiceProcess  # noqa: E402

# Keep-alive connections, as a wallet backend or a load balancer would hold them; BENCH_FORCE_CLOSE=1
# opens a connection per request instead.
FORCE_CLOSE = os.environ.get("BENCH_FORCE_CLOSE", "0") == "1"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "aud": "payment-service", "exp": int(time.time()) + 3600}, DEV_JWT_SECRET,
                      algorithm="HS256")


def run_level(fn, concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    """Run fn(worker_index, session-like state) in `concurrency` threads for `seconds`."""
    ok = 0
    errors = 0
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    barrier = threading.Barrier(concurrency)

    def worker(i: int) -> None:
        nonlocal ok, errors
        state: dict = {}
        mine: list[float] = []
        good = bad = 0
        barrier.wait()
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            success = fn(i, state)
            mine.append(time.perf_counter() - t0)
            if success:
                good += 1
            else:
                bad += 1
        with lock:
            ok += good
            errors += bad
            latencies.extend(mine)
        if "close" in state:
            state["close"]()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, latencies, errors


async def _http_level(api_url: str, concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    """The HTTP load from one asyncio loop: a cheap client, so the server gets the cores, not the client."""
    ok = errors = 0
    latencies: list[float] = []
    body = json.dumps({"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"})
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=FORCE_CLOSE)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def user_loop(i: int) -> None:
            nonlocal ok, errors
            auth = f"Bearer {token(f'bench_{i}_{uuid.uuid4().hex[:6]}')}"
            while time.perf_counter() < stop_at:
                headers = {"Authorization": auth, "Idempotency-Key": uuid.uuid4().hex,
                           "Content-Type": "application/json"}
                t0 = time.perf_counter()
                async with session.post(f"{api_url}/payments/topup", data=body, headers=headers) as resp:
                    await resp.read()
                    latencies.append(time.perf_counter() - t0)
                    if resp.status == 201:
                        ok += 1
                    else:
                        errors += 1

        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(user_loop(i) for i in range(concurrency)))
    return ok, latencies, errors


def http_level(api_url: str, concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    return asyncio.run(_http_level(api_url, concurrency, seconds))


def raw_sql_topup(db: dict):
    """The statements of one top-up, as the service issues them, minus the gateway call."""

    def fn(i: int, state: dict) -> bool:
        if "c" not in state:
            state["c"] = pymysql.connect(**db, autocommit=False)
            state["c"].cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            state["user"] = f"raw_{i}_{uuid.uuid4().hex[:6]}"
            state["close"] = state["c"].close
        c = state["c"]
        cur = c.cursor()
        now = datetime.now(UTC).replace(tzinfo=None)
        pid = "pay_" + uuid.uuid4().hex[:26]
        key = uuid.uuid4().hex
        caller = "user:" + state["user"]
        # 1. claim the idempotency key
        cur.execute(
            "INSERT INTO idempotency_keys (caller, `key`, method, path, request_hash, status, created_at, "
            "locked_until, expires_at, resource_id) "
            "VALUES (%s,%s,'POST','/payments/topup',%s,'IN_PROGRESS',%s,%s,%s,%s)",
            (caller, key, "h" * 64, now, now + timedelta(seconds=60), now + timedelta(days=1), pid),
        )
        c.commit()
        # 2. resume check; 3. velocity and device history; 4. the PENDING row
        cur.execute("SELECT * FROM payments WHERE id=%s", (pid,))
        c.commit()
        cur.execute(
            "SELECT count(id), coalesce(sum(CASE WHEN status IN ('CAPTURED','PENDING','PENDING_3DS') THEN amount "
            "ELSE 0 END), 0) FROM payments WHERE user_id=%s AND created_at >= %s",
            (state["user"], now - timedelta(hours=1)),
        )
        cur.execute(
            "INSERT INTO payments (id, user_id, amount, currency, gateway, gateway_token, status, refunded_amount, "
            "risk_decision, risk_reasons, created_at, updated_at) VALUES (%s,%s,1000,'INR','stripe','pm_card_visa',"
            "'PENDING',0,'allow','[]',%s,%s)",
            (pid, state["user"], now, now),
        )
        c.commit()
        # 5. apply the gateway's answer: guarded transition plus outbox row, one transaction
        cur.execute("SELECT * FROM payments WHERE id=%s", (pid,))
        cur.execute(
            "UPDATE payments SET status='CAPTURED', gateway_payment_id=%s, card_brand='visa', card_last4='4242', "
            "captured_at=%s, updated_at=%s WHERE id=%s AND status IN ('PENDING','PENDING_3DS')",
            ("pi_" + pid[4:], now, now, pid),
        )
        cur.execute(
            "INSERT INTO outbox_events (event_id, event_type, subject, user_id, payload, created_at) "
            "VALUES (%s,'PAYMENT_CAPTURED',%s,%s,%s,%s)",
            ("evt_" + pid[4:], pid, state["user"], json.dumps({"id": pid, "data": {"amount": 1000}}), now),
        )
        c.commit()
        cur.execute("SELECT * FROM payments WHERE id=%s", (pid,))
        c.commit()
        # 6. store the response under the key
        cur.execute(
            "UPDATE idempotency_keys SET status='COMPLETED', response_status=201, response_body=%s, "
            "locked_until=NULL WHERE caller=%s AND `key`=%s",
            ('{"id": "' + pid + '"}' * 20, caller, key),
        )
        c.commit()
        return True

    return fn


def summarize(name: str, level: int, ok: int, lat: list[float], errors: int, seconds: float) -> dict:
    row = {"name": name, "concurrency": level, "per_s": ok / seconds, "p50_ms": pct(lat, 50) * 1000,
           "p95_ms": pct(lat, 95) * 1000, "p99_ms": pct(lat, 99) * 1000, "errors": errors}
    print(f"{name:8s} c={level:3d}  {row['per_s']:8.1f}/s  p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms"
          f"  p99 {row['p99_ms']:7.1f} ms  errors {errors}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--worker-class", default="gthread")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        server = MariaDBServer(durable=True).start()
        url = server.url
    tmp = Path(tempfile.mkdtemp(prefix="bench-topup-"))
    migrate.upgrade(url)
    parts = urlsplit(url.replace("mysql+pymysql", "mysql"))
    db = {"host": parts.hostname, "port": parts.port or 3306, "user": parts.username, "password": parts.password,
          "database": parts.path.lstrip("/")}

    sb_port, api_port = free_port(), free_port()
    sandbox = ServiceProcess([str(VENV_BIN / "payment-service"), "sandbox", "--port", str(sb_port)], {}, REPO,
                             tmp / "sandbox.log")
    env = {
        "DATABASE_URL": url, "STRIPE_API_BASE": f"http://127.0.0.1:{sb_port}/stripe",
        "RAZORPAY_API_BASE": f"http://127.0.0.1:{sb_port}/razorpay", "READYZ_CHECK_BROKER": "false",
        "RATE_LIMIT_USER": "1000000/minute", "RISK_VELOCITY_MAX_ATTEMPTS": "100000000",
        "RISK_VELOCITY_MAX_AMOUNT": "100000000000000", "LOG_LEVEL": "WARNING",
    }
    api = ServiceProcess([str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{api_port}",
                          "--workers", str(args.workers), "--threads", str(args.threads),
                          "--worker-class", args.worker_class], env, REPO, tmp / "api.log")
    api_url = f"http://127.0.0.1:{api_port}"
    try:
        sandbox.wait_http(f"http://127.0.0.1:{sb_port}/")
        api.wait_http(api_url + "/healthz")
        print(f"MariaDB {url.split('@')[-1]}, sandbox :{sb_port}, API :{api_port} "
              f"({args.workers} workers x {args.threads} threads), {args.seconds:.0f} s per level, "
              f"{os.cpu_count()} cores\n")
        http_level(api_url, 2, 2.0)  # warm-up: connections, caches
        service = [summarize("service", c, *http_level(api_url, c, args.seconds), args.seconds) for c in levels]
        print()
        raw = [summarize("raw-sql", c, *run_level(raw_sql_topup(db), c, args.seconds), args.seconds)
               for c in levels]
    finally:
        api.stop()
        sandbox.stop()
        if server is not None:
            server.stop()

    peak_s = max(service, key=lambda r: r["per_s"])
    peak_raw = max(raw, key=lambda r: r["per_s"])
    half = peak_s["per_s"] / 2
    # The level whose throughput is closest to half the peak (from below, if any).
    at_half = min(service, key=lambda r: abs(r["per_s"] - half))
    print(f"\nservice peak {peak_s['per_s']:.1f}/s at c={peak_s['concurrency']}; raw-SQL ceiling "
          f"{peak_raw['per_s']:.1f}/s at c={peak_raw['concurrency']}; ratio {peak_s['per_s'] / peak_raw['per_s']:.1%}"
          f" (target >= 30%)")
    print(f"at about half the service peak (c={at_half['concurrency']}, {at_half['per_s']:.1f}/s): "
          f"p99 {at_half['p99_ms']:.1f} ms (target < 50 ms)")
    print(json.dumps({"service": service, "raw_sql": raw}, default=lambda x: round(x, 2)))


if __name__ == "__main__":
    main()
