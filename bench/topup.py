"""Benchmark: captured top-ups per second and latency at rising concurrency, against raw-SQL ceilings.

Not a test: it prints figures. It starts its own MariaDB (or uses TEST_DATABASE_URL), the gateway
sandbox as its own process (zero added latency unless --gateway-latency-ms), and
`payment-service serve`; then, for each concurrency level, drives POST /payments/topup for a fixed
time. At the same level, in the same run, it issues one top-up's SQL directly with PyMySQL from as
many clients, two ways (bench/_rawsql.py), with the same gateway latency as a sleep between
transactions:

- raw SQL, 4 tx (yardstick): the statements of 2026-11-21's top-up in its transactions. Fixed,
  so the service's share of it compares across commits (issue 9's target: >= 30 %).
- raw SQL, 2 tx (minimum): a top-up in two atomic phases around one gateway call.

Run:

    .venv/bin/python bench/topup.py [--seconds 8] [--levels 1,2,4,8,16,32] [--workers 2 --threads 8]
                                    [--gateway-latency-ms 0] [--raw-only]
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
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rawsql import minimum_2tx, yardstick_4tx  # noqa: E402

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


SERVICE = "service"
RAW_4TX = "raw SQL, 4 tx (yardstick)"
RAW_2TX = "raw SQL, 2 tx (minimum)"
NAME_W = len(RAW_4TX)


def summarize(name: str, level: int, ok: int, lat: list[float], errors: int, seconds: float) -> dict:
    row = {"name": name, "concurrency": level, "per_s": ok / seconds, "p50_ms": pct(lat, 50) * 1000,
           "p95_ms": pct(lat, 95) * 1000, "p99_ms": pct(lat, 99) * 1000, "errors": errors}
    print(f"{name:{NAME_W}s} c={level:3d}  {row['per_s']:8.1f}/s  p50 {row['p50_ms']:7.1f} ms"
          f"  p95 {row['p95_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {errors}", flush=True)
    return row


def share(part: float, whole: float) -> str:
    return f"{part / whole * 100:5.1f} %" if whole else "    - "


def slow_gateway(sandbox_url: str, latency_ms: int) -> None:
    """Every charge (POST .../payment_intents) waits latency_ms in the sandbox, then proceeds normally."""
    rule = {"mode": "latency", "method": "POST", "path": r"/v1/payment_intents$", "latency_ms": latency_ms,
            "remaining": None}
    req = urllib.request.Request(f"{sandbox_url}/_sandbox/faults", data=json.dumps(rule).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own local sandbox
        if resp.status != 201:
            raise RuntimeError(f"sandbox refused the latency rule: {resp.status}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each line at each level")
    ap.add_argument("--levels", default="1,2,4,8,16,32", help="concurrency levels, comma-separated")
    ap.add_argument("--workers", type=int, default=2, help="API gunicorn workers")
    ap.add_argument("--threads", type=int, default=8, help="API threads per worker")
    ap.add_argument("--worker-class", default="gthread")
    ap.add_argument("--gateway-latency-ms", type=int, default=0,
                    help="simulated gateway latency per charge: a sandbox latency rule for the service, "
                         "a sleep between transactions for the raw-SQL lines (default 0)")
    ap.add_argument("--raw-only", action="store_true",
                    help="run only the two raw-SQL lines (no sandbox, no API)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    latency_s = args.gateway_latency_ms / 1000.0

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

    sandbox = api = None
    rows: dict[str, list[dict]] = {SERVICE: [], RAW_4TX: [], RAW_2TX: []}
    try:
        if not args.raw_only:
            sb_port, api_port = free_port(), free_port()
            sandbox = ServiceProcess([str(VENV_BIN / "payment-service"), "sandbox", "--port", str(sb_port)], {},
                                     REPO, tmp / "sandbox.log")
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
            sandbox.wait_http(f"http://127.0.0.1:{sb_port}/")
            api.wait_http(api_url + "/healthz")
            if args.gateway_latency_ms > 0:
                slow_gateway(f"http://127.0.0.1:{sb_port}", args.gateway_latency_ms)
            print(f"MariaDB {url.split('@')[-1]}, sandbox :{sb_port}, API :{api_port} "
                  f"({args.workers} workers x {args.threads} threads), ", end="")
        else:
            print(f"raw SQL only; MariaDB {url.split('@')[-1]}, ", end="")
        print(f"{args.seconds:g} s per line per level, gateway latency {args.gateway_latency_ms} ms, "
              f"{os.cpu_count()} cores; logs in {tmp}\n")
        if api is not None:
            http_level(api_url, 2, 2.0)  # warm-up: connections, caches
        # Side by side: at each level the three lines run one after the other, on the same data.
        for c in levels:
            if api is not None:
                rows[SERVICE].append(summarize(SERVICE, c, *http_level(api_url, c, args.seconds), args.seconds))
            rows[RAW_4TX].append(summarize(RAW_4TX, c, *run_level(yardstick_4tx(db, latency_s), c, args.seconds),
                                           args.seconds))
            rows[RAW_2TX].append(summarize(RAW_2TX, c, *run_level(minimum_2tx(db, latency_s), c, args.seconds),
                                           args.seconds))
            if api is not None:
                s = rows[SERVICE][-1]["per_s"]
                print(f"{'':{NAME_W}s} c={c:3d}  service share: {share(s, rows[RAW_4TX][-1]['per_s'])} of 4 tx, "
                      f"{share(s, rows[RAW_2TX][-1]['per_s'])} of 2 tx", flush=True)
            print(flush=True)
    finally:
        if api is not None:
            api.stop()
        if sandbox is not None:
            sandbox.stop()
        if server is not None:
            server.stop()

    peak = {name: max(r, key=lambda row: row["per_s"]) for name, r in rows.items() if r}
    print("peaks (top-ups/s at the best level):")
    for name, p in peak.items():
        print(f"  {name:{NAME_W}s} {p['per_s']:8.1f}/s at c={p['concurrency']}")
    if SERVICE in peak:
        s = peak[SERVICE]["per_s"]
        print(f"service share of the {RAW_4TX} ceiling: {share(s, peak[RAW_4TX]['per_s']).strip()}"
              f" (issue 9 target >= 30 %)")
        print(f"service share of the {RAW_2TX} ceiling:  {share(s, peak[RAW_2TX]['per_s']).strip()}")
        half = s / 2
        # The level whose throughput is closest to half the peak.
        at_half = min(rows[SERVICE], key=lambda r: abs(r["per_s"] - half))
        print(f"at about half the service peak (c={at_half['concurrency']}, {at_half['per_s']:.1f}/s): "
              f"p99 {at_half['p99_ms']:.1f} ms (target < 50 ms)")
    print(f"2 tx minimum / 4 tx yardstick: {share(peak[RAW_2TX]['per_s'], peak[RAW_4TX]['per_s']).strip()}")
    print(json.dumps({"gateway_latency_ms": args.gateway_latency_ms, "service": rows[SERVICE],
                      "raw_sql": rows[RAW_4TX], "raw_sql_2tx": rows[RAW_2TX]}, default=lambda x: round(x, 2)))


if __name__ == "__main__":
    main()
