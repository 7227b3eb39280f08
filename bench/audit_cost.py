"""Benchmark: what writing audit rows costs a top-up, side by side (issue 12's budget: at most 10 %).

Not a test: it prints figures. On a machine shared with other work, closed-loop throughput moves by
2x from one minute to the next, so this measures both ways in one run, alternating short rounds on
the same MariaDB (durable) and the same gateway sandbox:

- **with audit**: `payment-service serve` from this tree;
- **without**: the same, from a copy of `payment_service/` in which the audit writes a top-up makes
  are cut out (the row of the capture's status change, written by `RecordRepository.move`, and the
  row of the API call, written with the stored answer or after it); nothing else differs.

The worker's sealer runs beside them, chaining new rows every second as in production (its own CPU is
printed apart). Per round it drives `--topups` top-ups from `--clients` concurrent keep-alive clients, at the
given gateway latency, and prints top-ups/s and the CPU seconds per top-up of the API's workers, the
sandbox and MariaDB (on a CPU-bound machine, throughput is what the CPU per top-up allows; CPU per
top-up is the steadier figure under outside load). Then medians of each side and their ratio.

Run:

    .venv/bin/python bench/audit_cost.py [--rounds 3] [--topups 600] [--clients 32] [--gateway-latency-ms 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procstat import cpu_seconds, family  # noqa: E402

from config.settings import DEV_AUDIT_HMAC_KEY, DEV_JWT_SECRET  # noqa: E402
from gateway_sandbox.server import free_port  # noqa: E402
from localparts.mariadb import MariaDBServer  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.adapters.audit_store import SqlAuditStore  # noqa: E402
from payment_service.bootstrap import make_engine  # noqa: E402
from payment_service.services.audit import seal_pending  # noqa: E402
from tests.support.processes import VENV_BIN, ServiceProcess  # noqa: E402

BODY = {"amount": 1000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa"}
CUTS = [  # (file, text, replacement): the two audit writes of a top-up
    ("api/__init__.py", "    audit_api.init_app(app)\n", "    pass  # bench: no audit rows\n"),
    ("adapters/repository.py", "        if moved:\n            self.audit_log.add(",
     "        if False:  # bench: no audit rows\n            self.audit_log.add("),
    ("adapters/repository.py", "        row = audit.api_call(utcnow(), status, resource_id)\n",
     "        row = None  # bench: no audit rows\n"),
]


def without_audit_tree(tmp: Path) -> Path:
    root = tmp / "without-audit"
    shutil.copytree(REPO / "payment_service", root / "payment_service",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for rel, old, new in CUTS:
        path = root / "payment_service" / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"cannot cut the audit write out of {rel}: the code changed; update CUTS")
        path.write_text(text.replace(old, new))
    return root


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "aud": "payment-service", "exp": int(time.time()) + 7200}, DEV_JWT_SECRET,
                      algorithm="HS256")


def drive(url: str, topups: int, clients: int) -> tuple[float, int]:
    local = threading.local()
    tokens = [token(f"u_bench_{i}") for i in range(clients)]
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        r = s.post(url + "/payments/topup", json=BODY, timeout=60, headers={
            "Authorization": f"Bearer {tokens[i % clients]}", "Idempotency-Key": uuid.uuid4().hex})
        if r.status_code != 201:
            with lock:
                errors += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(topups)))
    return time.perf_counter() - t0, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--topups", type=int, default=600)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--gateway-latency-ms", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-cost-"))
    server = MariaDBServer(durable=True).start()
    procs: list[ServiceProcess] = []
    try:
        url = server.url
        migrate.upgrade(url)
        sb_port = free_port()
        sandbox = ServiceProcess([str(VENV_BIN / "payment-service"), "sandbox", "--port", str(sb_port)], {}, REPO,
                                 tmp / "sandbox.log")
        procs.append(sandbox)
        sandbox.wait_http(f"http://127.0.0.1:{sb_port}/")
        if args.gateway_latency_ms:  # every charge waits that long, as in bench/topup.py
            rule = {"mode": "latency", "method": "POST", "path": r"/v1/payment_intents$",
                    "latency_ms": args.gateway_latency_ms, "remaining": None}
            req = urllib.request.Request(f"http://127.0.0.1:{sb_port}/_sandbox/faults", method="POST",
                                         data=json.dumps(rule).encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the local sandbox
                assert resp.status == 201, resp.status
        env = {"DATABASE_URL": url, "STRIPE_API_BASE": f"http://127.0.0.1:{sb_port}/stripe",
               "RAZORPAY_API_BASE": f"http://127.0.0.1:{sb_port}/razorpay", "LOG_LEVEL": "WARNING",
               "RATE_LIMIT_USER": "1000000/minute", "RISK_VELOCITY_MAX_ATTEMPTS": "1000000",
               "RISK_VELOCITY_MAX_AMOUNT": "100000000000000"}
        sides: dict[str, tuple[str, ServiceProcess]] = {}
        for side, pythonpath in (("with audit", None), ("without", str(without_audit_tree(tmp)))):
            port = free_port()
            side_env = {**env, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
            proc = ServiceProcess([str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{port}",
                                   "--workers", "2"], side_env, tmp, tmp / f"api-{port}.log")
            procs.append(proc)
            proc.wait_http(f"http://127.0.0.1:{port}/healthz")
            sides[side] = (f"http://127.0.0.1:{port}", proc)
        db_pids = family(server.proc.pid) if server.proc else []
        # The worker's sealer, as in production: chains new rows every second (its own CPU is reported apart;
        # its database work is in MariaDB's figure).
        sealer_cpu = [0.0]
        stop = threading.Event()

        def seal_loop() -> None:
            engine = make_engine(url, pool_size=1)
            store = SqlAuditStore(engine)
            while not stop.wait(1.0):
                t0 = time.thread_time()
                seal_pending(store, DEV_AUDIT_HMAC_KEY.encode())
                sealer_cpu[0] += time.thread_time() - t0
            engine.dispose()

        sealer = threading.Thread(target=seal_loop, daemon=True)
        sealer.start()
        print(f"{args.topups} top-ups per round from {args.clients} clients, gateway latency "
              f"{args.gateway_latency_ms} ms, {args.rounds} rounds alternated; 2 cores; logs in {tmp}")
        results: dict[str, list[tuple[float, float]]] = {s: [] for s in sides}
        for side_url, _proc in sides.values():
            drive(side_url, min(100, args.topups), args.clients)  # warm-up: connections, caches
        for rnd in range(args.rounds):
            for side in (list(sides) if rnd % 2 == 0 else list(reversed(sides))):
                side_url, proc = sides[side]
                parts = {"API": family(proc.proc.pid), "sandbox": family(sandbox.proc.pid), "MariaDB": db_pids}
                load = Path("/proc/loadavg").read_text().split()[0]
                c0 = {name: cpu_seconds(pids) for name, pids in parts.items()}
                took, errors = drive(side_url, args.topups, args.clients)
                each = {name: (cpu_seconds(pids) - c0[name]) / args.topups * 1000 for name, pids in parts.items()}
                cpu = sum(each.values())
                rate = args.topups / took
                results[side].append((rate, cpu))
                split = ", ".join(f"{name} {ms:.2f}" for name, ms in each.items())
                print(f"round {rnd + 1} {side:<11} {rate:7.1f} top-ups/s  {cpu:5.2f} ms CPU per top-up ({split})  "
                      f"errors {errors}  load {load}")
        stop.set()
        sealer.join(30)
        sealed_topups = args.topups * args.rounds + min(100, args.topups)
        print(f"the sealer: {sealer_cpu[0] / sealed_topups * 1000:.2f} ms CPU per top-up (two rows each), not in the "
              "figures above")
        med = {s: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for s, v in results.items()}
        w, wo = med["with audit"], med["without"]
        print(f"medians: with audit {w[0]:.1f}/s, {w[1]:.2f} ms CPU; without {wo[0]:.1f}/s, {wo[1]:.2f} ms CPU")
        print(f"throughput with audit = {w[0] / wo[0] * 100:.1f} % of without; CPU per top-up "
              f"+{(w[1] / wo[1] - 1) * 100:.1f} % (budget: at most 10 % of throughput)")
    finally:
        for p in reversed(procs):
            p.stop()
        server.stop()


if __name__ == "__main__":
    main()
