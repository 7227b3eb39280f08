"""Benchmark: signed webhooks accepted per second, with 20% duplicate deliveries.

Not a test: it prints figures. Starts its own MariaDB (or TEST_DATABASE_URL) and
`payment-service serve`, then posts pre-signed Stripe and Razorpay events (one in five a
redelivery of an earlier one) from an asyncio client, and checks afterwards that the inbox holds
each distinct event exactly once. Target on this 2-core machine: at least 1,000 accepted per second.

    .venv/bin/python bench/webhooks.py [--events 20000] [--concurrency 64] [--workers 3 --threads 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from sqlalchemy import create_engine, func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.settings import SANDBOX_RAZORPAY_WEBHOOK_SECRET, SANDBOX_STRIPE_WEBHOOK_SECRET  # noqa: E402
from gateway_sandbox.server import free_port  # noqa: E402
from localparts.mariadb import MariaDBServer  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.adapters.orm import GatewayEventRow  # noqa: E402
from tests.support.processes import VENV_BIN, ServiceProcess  # noqa: E402


def stripe_event() -> tuple[str, bytes, dict[str, str]]:
    pid = "pay_" + uuid.uuid4().hex[:26]
    event = {"id": "evt_" + uuid.uuid4().hex, "object": "event", "type": "payment_intent.succeeded",
             "created": int(time.time()), "livemode": False,
             "data": {"object": {"id": "pi_" + uuid.uuid4().hex[:24], "object": "payment_intent",
                                 "status": "succeeded", "amount": 50000, "currency": "inr",
                                 "metadata": {"payment_id": pid}}}}
    body = json.dumps(event).encode()
    ts = int(time.time())
    sig = hmac.new(SANDBOX_STRIPE_WEBHOOK_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return "/webhooks/stripe", body, {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def razorpay_event() -> tuple[str, bytes, dict[str, str]]:
    pid = "pay_" + uuid.uuid4().hex[:26]
    event = {"entity": "event", "account_id": "acc_bench", "event": "payment.captured", "contains": ["payment"],
             "payload": {"payment": {"entity": {"id": "pay_" + uuid.uuid4().hex[:14], "entity": "payment",
                                                "amount": 50000, "currency": "INR", "status": "captured",
                                                "notes": {"payment_id": pid}}}},
             "created_at": int(time.time())}
    body = json.dumps(event).encode()
    sig = hmac.new(SANDBOX_RAZORPAY_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return "/webhooks/razorpay", body, {"X-Razorpay-Signature": sig, "X-Razorpay-Event-Id": uuid.uuid4().hex[:14],
                                        "Content-Type": "application/json"}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


async def drive(base: str, deliveries: list[tuple[str, bytes, dict[str, str]]], concurrency: int
                ) -> tuple[int, int, list[float], float]:
    queue: asyncio.Queue[tuple[str, bytes, dict[str, str]]] = asyncio.Queue()
    for d in deliveries:
        queue.put_nowait(d)
    ok = bad = 0
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok, bad
            while not queue.empty():
                path, body, headers = queue.get_nowait()
                t0 = time.perf_counter()
                async with session.post(base + path, data=body, headers=headers) as resp:
                    await resp.read()
                    latencies.append(time.perf_counter() - t0)
                    if resp.status == 200:
                        ok += 1
                    else:
                        bad += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return ok, bad, latencies, elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--duplicates", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()

    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        server = MariaDBServer(durable=True).start()
        url = server.url
    migrate.upgrade(url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    port = free_port()
    env = {"DATABASE_URL": url, "LOG_LEVEL": "WARNING"}
    api = ServiceProcess([str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{port}",
                          "--workers", str(args.workers), "--threads", str(args.threads)], env, REPO, tmp / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        api.wait_http(base + "/healthz")
        rng = random.Random(7)
        n_unique = int(args.events * (1 - args.duplicates))
        unique = [stripe_event() if i % 2 == 0 else razorpay_event() for i in range(n_unique)]
        deliveries = list(unique) + [rng.choice(unique) for _ in range(args.events - n_unique)]
        rng.shuffle(deliveries)
        asyncio.run(drive(base, [stripe_event() for _ in range(300)], 16))  # warm-up
        ok, bad, lat, elapsed = asyncio.run(drive(base, deliveries, args.concurrency))
        engine = create_engine(url)
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(GatewayEventRow)).scalar_one()
        engine.dispose()
    finally:
        api.stop()
        if server is not None:
            server.stop()
    print(f"{args.events} deliveries ({args.duplicates:.0%} duplicates), {args.concurrency} connections, "
          f"API {args.workers} workers x {args.threads} threads, MariaDB durable, {os.cpu_count()} cores")
    print(f"accepted {ok / elapsed:.0f}/s (target >= 1000/s); {ok} answered 200, {bad} other, in {elapsed:.1f} s")
    p50, p95, p99 = (pct(lat, p) * 1000 for p in (50, 95, 99))
    print(f"latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")
    print(f"inbox rows: {stored} for {n_unique} distinct events + 300 warm-up (each stored once: "
          f"{stored == n_unique + 300})")


if __name__ == "__main__":
    main()
