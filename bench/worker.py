"""Benchmark: the worker keeps up (issue 15). Webhooks applied per second, receipt -> applied latency,
and how long a backlog of stale 3-D Secure payments takes to expire.

Not a test: it prints figures. It starts its own MariaDB (durable; or TEST_DATABASE_URL), the gateway
sandbox and `payment-service serve` as processes, and `payment-service worker` processes as it needs
them, then in one run:

1. apply rate: posts `--events` signed webhooks to the API with no worker running (70 % for payments
   we hold in PENDING_3DS, half Stripe `payment_intent.succeeded`, half Razorpay `payment.captured`;
   30 % not ours: Stripe `payment_intent.created` and `payment_intent.succeeded` of intents without our
   metadata, Razorpay `payment.captured` without our notes), then starts one worker and times it
   draining the inbox (first to last `applied_at`, from the database). The same again, on new events,
   with two workers; one and two alternately, `--repeat` times each, best of each (the machine is shared).
2. latency: one worker running; signed webhooks (the same mix) posted at a steady `--rate` for
   `--rate-seconds`; receipt (`received_at`, stored by the API) -> applied (`applied_at`) p50/p99.
3. expiry: for each `--latencies` value, `--stale` PENDING_3DS payments whose intents really wait
   for 3-D Secure in the sandbox, all past their expiry, and a sandbox `latency` fault on every
   cancel; starts one worker and times it from start until none is left (each one cancelled at the
   sandbox, then EXPIRED with its PAYMENT_EXPIRED).

    .venv/bin/python bench/worker.py [--events 10000] [--repeat 2] [--rate 200 --rate-seconds 20]
                                     [--stale 10000] [--latencies 0,300] [--sweep-concurrency N]
                                     [--applier-threads N] [--worker-src DIR]

Targets (issue 15): >= 500 of our events applied per second by one worker, nearly twice that by two;
p99 < 1 s at 200 events/s; 10,000 expiries < 60 s at 300 ms per cancel.
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
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from sqlalchemy import Engine, bindparam, create_engine, insert, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.settings import (  # noqa: E402
    SANDBOX_RAZORPAY_WEBHOOK_SECRET,
    SANDBOX_STRIPE_API_KEY,
    SANDBOX_STRIPE_WEBHOOK_SECRET,
)
from gateway_sandbox.server import free_port  # noqa: E402
from localparts.mariadb import MariaDBServer  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.adapters.orm import PaymentRow  # noqa: E402
from payment_service.domain import ids  # noqa: E402
from tests.support.processes import VENV_BIN, ServiceProcess  # noqa: E402

Delivery = tuple[str, bytes, dict[str, str]]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pid: int | None) -> float:
    """CPU (user + system) of a process and its children, from /proc: where the 2 cores went."""
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


DB_PID: int | None = None  # the MariaDB this run started, if any
SANDBOX_PID: int | None = None


# --- the events ------------------------------------------------------------------------------------


def stripe_delivery(event_type: str, intent: dict[str, Any]) -> Delivery:
    event = {"id": "evt_" + uuid.uuid4().hex, "object": "event", "api_version": "2024-06-20",
             "type": event_type, "created": int(time.time()), "livemode": False,
             "data": {"object": intent}}
    body = json.dumps(event).encode()
    ts = int(time.time())
    sig = hmac.new(SANDBOX_STRIPE_WEBHOOK_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return "/webhooks/stripe", body, {"Stripe-Signature": f"t={ts},v1={sig}", "Content-Type": "application/json"}


def intent(pi_id: str, status: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {"id": pi_id, "object": "payment_intent", "amount": 50000, "currency": "inr", "status": status,
            "capture_method": "automatic", "confirmation_method": "automatic", "livemode": False,
            "latest_charge": "ch_" + pi_id[3:], "payment_method": "pm_" + pi_id[3:], "metadata": metadata}


def razorpay_delivery(rzp_payment_id: str, notes: dict[str, str]) -> Delivery:
    event = {"entity": "event", "account_id": "acc_bench", "event": "payment.captured", "contains": ["payment"],
             "payload": {"payment": {"entity": {
                 "id": rzp_payment_id, "entity": "payment", "amount": 50000, "currency": "INR", "status": "captured",
                 "order_id": "order_" + rzp_payment_id[4:], "method": "card", "captured": True, "notes": notes}}},
             "created_at": int(time.time())}
    body = json.dumps(event).encode()
    sig = hmac.new(SANDBOX_RAZORPAY_WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return "/webhooks/razorpay", body, {"X-Razorpay-Signature": sig, "X-Razorpay-Event-Id": "evt_" + uuid.uuid4().hex,
                                        "Content-Type": "application/json"}


def rzp_id() -> str:
    return "pay_" + uuid.uuid4().hex[:14]


def seed_3ds(engine: Engine, gateway_ids: list[tuple[str, str]], *, expired: bool) -> list[str]:
    """PENDING_3DS payments of ours, one per (gateway, gateway payment id); returns our ids."""
    t = datetime.now(UTC)
    expires = t - timedelta(seconds=1) if expired else t + timedelta(minutes=15)
    rows = [{"id": ids.new_id(ids.PAYMENT), "user_id": f"u_bench_{i}", "amount": 50000, "currency": "INR",
             "gateway": gw, "status": "PENDING_3DS", "created_at": t, "updated_at": t, "gateway_payment_id": gid,
             "next_action_url": "https://sandbox.example/3ds", "expires_at": expires, "next_attempt_at": expires,
             "attempts": 0, "refunded_amount": 0} for i, (gw, gid) in enumerate(gateway_ids)]
    with engine.begin() as conn:
        for i in range(0, len(rows), 2000):
            conn.execute(insert(PaymentRow.__table__), rows[i:i + 2000])  # type: ignore[arg-type]
    return [r["id"] for r in rows]


def mixed_events(engine: Engine, n: int, rng: random.Random) -> tuple[list[Delivery], int]:
    """n deliveries, 70 % ours (for PENDING_3DS payments seeded here), 30 % not ours; and how many are ours."""
    ours = int(n * 0.7)
    gateway_ids = [("stripe", "pi_" + uuid.uuid4().hex[:24]) if i % 2 == 0 else ("razorpay", rzp_id())
                   for i in range(ours)]
    payment_ids = seed_3ds(engine, gateway_ids, expired=False)
    deliveries = [
        stripe_delivery("payment_intent.succeeded", intent(gid, "succeeded", {"payment_id": pid}))
        if gw == "stripe" else razorpay_delivery(gid, {"payment_id": pid})
        for (gw, gid), pid in zip(gateway_ids, payment_ids, strict=True)
    ]
    for i in range(n - ours):
        foreign = "pi_" + uuid.uuid4().hex[:24]
        kind = i % 3
        if kind == 0:  # another application's intent, just created: a type we do not act on
            deliveries.append(stripe_delivery("payment_intent.created",
                                              intent(foreign, "requires_payment_method", {"order": str(i)})))
        elif kind == 1:  # a payment link's success: no payment_id of ours
            deliveries.append(stripe_delivery("payment_intent.succeeded", intent(foreign, "succeeded", {})))
        else:  # a Razorpay payment of another checkout on the same account
            deliveries.append(razorpay_delivery(rzp_id(), {"shop_order": str(i)}))
    rng.shuffle(deliveries)
    return deliveries, ours


async def post_all(base: str, deliveries: list[Delivery], concurrency: int) -> tuple[int, float]:
    queue: asyncio.Queue[Delivery] = asyncio.Queue()
    for d in deliveries:
        queue.put_nowait(d)
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal ok
            while not queue.empty():
                path, body, headers = queue.get_nowait()
                async with session.post(base + path, data=body, headers=headers) as resp:
                    await resp.read()
                    ok += resp.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, time.perf_counter() - t0


async def post_paced(base: str, deliveries: list[Delivery], rate: float) -> tuple[int, float]:
    """Each delivery at its own time, `rate` a second, whatever the answers' latency."""
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def send(d: Delivery) -> None:
            nonlocal ok
            path, body, headers = d
            async with session.post(base + path, data=body, headers=headers) as resp:
                await resp.read()
                ok += resp.status == 200

        t0 = time.perf_counter()
        tasks = []
        for i, d in enumerate(deliveries):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(d)))
        await asyncio.gather(*tasks)
    return ok, time.perf_counter() - t0


# --- the processes --------------------------------------------------------------------------------


def start_workers(n: int, env: dict[str, str], tmp: Path, tag: str) -> list[ServiceProcess]:
    return [ServiceProcess([str(VENV_BIN / "payment-service"), "worker"], env, REPO, tmp / f"worker-{tag}-{i}.log")
            for i in range(n)]


def stop_all(procs: list[ServiceProcess]) -> None:
    for p in procs:
        p.stop()


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def wait_until(predicate: Any, timeout: float, what: str, procs: list[ServiceProcess] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs or []:
            if p.proc.poll() is not None:
                raise RuntimeError(f"a worker exited:\n{p.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def inbox_drained(engine: Engine) -> bool:
    return scalar(engine, "SELECT COUNT(*) FROM gateway_events WHERE status IN ('RECEIVED','PROCESSING')") == 0


def settled_since(engine: Engine, since_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT status, COUNT(*) AS n, MIN(applied_at) AS first, MAX(applied_at) AS last FROM gateway_events "
            "WHERE id > :i GROUP BY status"), {"i": since_id}).all()
    return {r.status: r for r in rows}


def max_event_id(engine: Engine) -> int:
    return int(scalar(engine, "SELECT COALESCE(MAX(id), 0) FROM gateway_events"))


# --- the three measurements -----------------------------------------------------------------------


def apply_rate(base: str, engine: Engine, env: dict[str, str], tmp: Path, n_workers: int, events: int,
               rng: random.Random) -> dict[str, Any]:
    since = max_event_id(engine)
    deliveries, ours = mixed_events(engine, events, rng)
    accepted, took = asyncio.run(post_all(base, deliveries, 32))
    assert accepted == len(deliveries), f"{len(deliveries) - accepted} webhooks refused"
    db_cpu = cpu_seconds(DB_PID)
    workers = start_workers(n_workers, env, tmp, f"apply{n_workers}")
    try:
        wait_until(lambda: inbox_drained(engine), 600, "the inbox drained", workers)
        worker_cpu = sum(cpu_seconds(w.proc.pid) for w in workers)
        db_cpu = cpu_seconds(DB_PID) - db_cpu
    finally:
        stop_all(workers)
    s = settled_since(engine, since)
    first = min(r.first for r in s.values() if r.first is not None)
    last = max(r.last for r in s.values() if r.last is not None)
    seconds = (last - first).total_seconds()
    applied = s["APPLIED"].n if "APPLIED" in s else 0
    not_ours = s["NOT_OURS"].n if "NOT_OURS" in s else 0
    ignored = s["IGNORED"].n if "IGNORED" in s else 0
    retry = s["RETRY"].n if "RETRY" in s else 0  # before issue 15, not-ours events went here
    row = {"workers": n_workers, "events": len(deliveries), "ours": ours, "applied": applied,
           "not_ours": not_ours, "ignored": ignored, "seconds": seconds, "ours_per_s": applied / seconds,
           "all_per_s": (applied + not_ours + ignored) / seconds, "accepted_per_s": accepted / took,
           "worker_cpu_s": worker_cpu, "db_cpu_s": db_cpu}
    print(f"apply, {n_workers} worker(s): {len(deliveries)} events accepted at {row['accepted_per_s']:.0f}/s "
          f"(no worker running), then drained in {seconds:.1f} s: ours {applied}/{ours} APPLIED = "
          f"{row['ours_per_s']:.0f}/s; all settled {row['all_per_s']:.0f}/s (NOT_OURS {not_ours}, "
          f"IGNORED {ignored}, left to retry {retry}); CPU: worker(s) {worker_cpu:.1f} s incl. start-up "
          f"({worker_cpu / len(deliveries) * 1000:.2f} ms/event), MariaDB {db_cpu:.1f} s; load {load()}", flush=True)
    return row


def latency(base: str, engine: Engine, env: dict[str, str], tmp: Path, rate: float, seconds: float,
            rng: random.Random) -> dict[str, Any]:
    since = max_event_id(engine)
    deliveries, _ = mixed_events(engine, int(rate * seconds), rng)
    workers = start_workers(1, env, tmp, "latency")
    try:
        time.sleep(3)  # the worker up and idle before the first event
        accepted, took = asyncio.run(post_paced(base, deliveries, rate))
        wait_until(lambda: inbox_drained(engine), 300, "the inbox drained", workers)
    finally:
        stop_all(workers)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT status, TIMESTAMPDIFF(MICROSECOND, received_at, applied_at) / 1e6 AS s FROM gateway_events "
            "WHERE id > :i"), {"i": since}).all()
    ours = [float(r.s) for r in rows if r.status == "APPLIED"]
    every = [float(r.s) for r in rows if r.s is not None]
    row = {"rate": rate, "sent_per_s": accepted / took, "events": len(rows), "ours": len(ours),
           "p50_ms": pct(ours, 50) * 1000, "p95_ms": pct(ours, 95) * 1000, "p99_ms": pct(ours, 99) * 1000,
           "max_ms": max(ours) * 1000, "all_p99_ms": pct(every, 99) * 1000}
    print(f"latency at {rate:.0f}/s for {seconds:.0f} s (sent at {row['sent_per_s']:.0f}/s), one worker: receipt -> "
          f"applied, ours ({len(ours)}): p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
          f"p99 {row['p99_ms']:.0f} ms, max {row['max_ms']:.0f} ms; every event p99 {row['all_p99_ms']:.0f} ms; "
          f"load {load()}", flush=True)
    return row


def sandbox_call(sandbox: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(sandbox + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own local sandbox
        return json.loads(resp.read() or b"null")


async def create_3ds_intents(sandbox: str, n: int, concurrency: int = 64) -> list[str]:
    """n payment intents waiting for 3-D Secure at the sandbox, made through its Stripe API."""
    out: list[str] = []
    headers = {"Authorization": f"Bearer {SANDBOX_STRIPE_API_KEY}", "Content-Type": "application/x-www-form-urlencoded"}
    todo = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for i in todo:
                form = urlencode({"amount": 50000, "currency": "inr", "payment_method": "pm_card_threeDSecure2Required",
                                  "confirm": "true", "return_url": "https://wallet.example/back",
                                  "metadata[bench]": str(i)})
                async with session.post(f"{sandbox}/stripe/v1/payment_intents", data=form, headers=headers) as resp:
                    pi = await resp.json()
                    if resp.status != 200 or pi.get("status") != "requires_action":
                        raise RuntimeError(f"sandbox intent: {resp.status} {pi}")
                    out.append(pi["id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def expiry(sandbox: str, engine: Engine, env: dict[str, str], tmp: Path, stale: int, latency_ms: int
           ) -> dict[str, Any]:
    sandbox_call(sandbox, "DELETE", "/_sandbox/faults")
    t = time.perf_counter()
    intents = asyncio.run(create_3ds_intents(sandbox, stale))
    made = time.perf_counter() - t
    payment_ids = seed_3ds(engine, [("stripe", pi) for pi in intents], expired=True)
    if latency_ms:
        sandbox_call(sandbox, "POST", "/_sandbox/faults", {
            "mode": "latency", "method": "POST", "path": r"/stripe/v1/payment_intents/[^/]+/cancel$",
            "latency_ms": latency_ms, "remaining": None})
    outbox_before = scalar(engine, "SELECT COUNT(*) FROM outbox_events WHERE event_type = 'PAYMENT_EXPIRED'")
    started = time.perf_counter()
    cpu_before = {"db": cpu_seconds(DB_PID), "sandbox": cpu_seconds(SANDBOX_PID)}
    workers = start_workers(1, env, tmp, f"expire{latency_ms}")
    try:
        wait_until(lambda: scalar(engine, "SELECT COUNT(*) FROM payments WHERE status = 'PENDING_3DS' "
                                          "AND expires_at < UTC_TIMESTAMP(6)") == 0,
                   900, "every stale payment expired", workers)
        elapsed = time.perf_counter() - started
        cpu = {"worker": cpu_seconds(workers[0].proc.pid), "db": cpu_seconds(DB_PID) - cpu_before["db"],
               "sandbox": cpu_seconds(SANDBOX_PID) - cpu_before["sandbox"]}
    finally:
        stop_all(workers)
        sandbox_call(sandbox, "DELETE", "/_sandbox/faults")
    mine = text("SELECT COUNT(*), MIN(updated_at), MAX(updated_at) FROM payments "
                "WHERE status = 'EXPIRED' AND id IN :ids").bindparams(bindparam("ids", expanding=True))
    with engine.connect() as conn:
        expired, first, last = conn.execute(mine, {"ids": payment_ids}).one()
    events = scalar(engine, "SELECT COUNT(*) FROM outbox_events WHERE event_type = 'PAYMENT_EXPIRED'") - outbox_before
    sample = random.Random(3).sample(intents, min(20, len(intents)))
    canceled = sum(sandbox_call(sandbox, "GET", f"/_sandbox/objects/{pi}")["status"] == "canceled" for pi in sample)
    row = {"latency_ms": latency_ms, "stale": stale, "seconds": elapsed, "expired": expired,
           "events": events, "per_s": stale / elapsed, "first_to_last_s": (last - first).total_seconds(),
           "setup_s": made, "cpu_s": cpu}
    print(f"expiry at {latency_ms} ms per cancel: {stale} stale PENDING_3DS expired in {elapsed:.1f} s from worker "
          f"start ({row['per_s']:.0f}/s; first to last expiry {row['first_to_last_s']:.1f} s); EXPIRED {expired}, "
          f"PAYMENT_EXPIRED events {events}, sampled intents canceled at the sandbox {canceled}/{len(sample)}; "
          f"CPU: worker {cpu['worker']:.1f} s, sandbox {cpu['sandbox']:.1f} s, MariaDB {cpu['db']:.1f} s; "
          f"load {load()}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10000, help="webhooks per apply-rate run")
    ap.add_argument("--repeat", type=int, default=2, help="apply-rate runs per worker count (best of)")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--rate-seconds", type=float, default=20.0)
    ap.add_argument("--stale", type=int, default=10000, help="stale PENDING_3DS payments per expiry run")
    ap.add_argument("--latencies", default="0,300", help="sandbox ms per cancel, one expiry run each")
    ap.add_argument("--sweep-concurrency", type=int, default=None, help="SWEEP_CONCURRENCY (default: the setting's)")
    ap.add_argument("--applier-threads", type=int, default=None, help="WORKER_APPLIER_THREADS (default: the setting's)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: apply,latency,expiry")
    ap.add_argument("--api-worker-class", default="gthread",
                    help="the API only stores the webhooks here; what is measured is the worker")
    ap.add_argument("--worker-src", default=None,
                    help="run the workers from another source tree (e.g. `git archive HEAD` unpacked), to compare")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rng = random.Random(15)

    global DB_PID, SANDBOX_PID
    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        server = MariaDBServer(durable=True).start()
        url = server.url
        DB_PID = server.proc.pid if server.proc is not None else None
    migrate.upgrade(url)
    engine = create_engine(url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    sb_port, api_port = free_port(), free_port()
    sandbox = ServiceProcess([str(VENV_BIN / "payment-service"), "sandbox", "--port", str(sb_port)], {}, REPO,
                             tmp / "sandbox.log")
    sandbox_url = f"http://127.0.0.1:{sb_port}"
    SANDBOX_PID = sandbox.proc.pid
    env = {"DATABASE_URL": url, "STRIPE_API_BASE": f"{sandbox_url}/stripe",
           "RAZORPAY_API_BASE": f"{sandbox_url}/razorpay", "LOG_LEVEL": "WARNING"}
    if args.sweep_concurrency:
        env["SWEEP_CONCURRENCY"] = str(args.sweep_concurrency)
    if args.applier_threads:
        env["WORKER_APPLIER_THREADS"] = str(args.applier_threads)
    worker_env = {**env, "PYTHONPATH": args.worker_src} if args.worker_src else env
    api = ServiceProcess([str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{api_port}",
                          "--workers", "2", "--worker-class", args.api_worker_class], env, REPO, tmp / "api.log")
    base = f"http://127.0.0.1:{api_port}"
    results: dict[str, Any] = {"cores": os.cpu_count(), "load_before": load()}
    try:
        sandbox.wait_http(sandbox_url + "/")
        api.wait_http(base + "/healthz")
        print(f"MariaDB durable, sandbox :{sb_port}, API :{api_port} (2 workers), {os.cpu_count()} cores, "
              f"load {load()}; logs in {tmp}\n", flush=True)
        asyncio.run(post_all(base, mixed_events(engine, 300, rng)[0], 16))  # warm-up: stored, applied below
        if "apply" not in skip:
            # One worker, two workers, alternately: the machine is shared, so each gets its best of --repeat.
            runs = [apply_rate(base, engine, worker_env, tmp, n, args.events, rng)
                    for _ in range(args.repeat) for n in (1, 2)]
            results["apply_runs"] = runs
            results["apply"] = [max((r for r in runs if r["workers"] == n), key=lambda r: r["ours_per_s"])
                                for n in (1, 2)]
        if "latency" not in skip:
            results["latency"] = latency(base, engine, worker_env, tmp, args.rate, args.rate_seconds, rng)
        if "expiry" not in skip:
            results["expiry"] = [expiry(sandbox_url, engine, worker_env, tmp, args.stale, int(ms))
                                 for ms in args.latencies.split(",")]
    finally:
        api.stop()
        sandbox.stop()
        engine.dispose()
        if server is not None:
            server.stop()

    print("\nsummary (issue 15 targets in brackets):")
    if "apply" in results:
        one, two = results["apply"]
        print(f"  our webhooks applied by one worker: {one['ours_per_s']:.0f}/s [>= 500/s]; by two: "
              f"{two['ours_per_s']:.0f}/s = {two['ours_per_s'] / one['ours_per_s']:.2f}x [nearly 2x] "
              f"(best of {args.repeat} each)")
    if "latency" in results:
        r = results["latency"]
        print(f"  receipt -> applied at {r['rate']:.0f}/s: p50 {r['p50_ms']:.0f} ms, "
              f"p99 {r['p99_ms']:.0f} ms [< 1000 ms]")
    for r in results.get("expiry", []):
        print(f"  {r['stale']} stale PENDING_3DS at {r['latency_ms']} ms per cancel: {r['seconds']:.1f} s"
              + (" [< 60 s]" if r["latency_ms"] == 300 else ""))
    print(json.dumps(results, default=lambda x: round(x, 3) if isinstance(x, float) else str(x)))


if __name__ == "__main__":
    main()
