"""Benchmark: the gateway sandbox's own CPU per Stripe top-up (PaymentIntent create with confirm=true).

Not a test: it prints figures. In `bench/topup.py` the sandbox shares the machine's two cores with the
service it stands in for, so each millisecond it spends per charge is taken from the service measured.
This measures that millisecond alone: the sandbox app (`create_sandbox_app`, no webhook URL, as in
the benchmark) is called in-process as a WSGI application with the request the service's adapter
sends (`StripeGateway.charge`: pm_card_visa, confirm=true, metadata, expand payment_method and
latest_charge, a fresh `Idempotency-Key`), its form body encoded by the `stripe` SDK's own encoder,
through a `latency` fault rule of 0 ms (the benchmark's 300 ms fault, without the sleep).

Why not the SDK over HTTP: `time.process_time` counts the whole process, so the SDK's and the HTTP
server's CPU would be counted with the sandbox's. The WSGI environs are built before the clock starts;
what is timed is Flask, Werkzeug and the sandbox, plus its webhook thread (waited for at the end).

    .venv/bin/python bench/sandbox_cpu.py [--calls 1000] [--rounds 3] [--threads] [--against /tmp/sbbase]

Each measurement runs in a fresh process, monkey-patched by gevent as `payment-service sandbox` is
(its webhook thread a greenlet), unless `--threads` (real threads, as the tests run the sandbox).

`--against DIR` also measures the gateway_sandbox package found in DIR (e.g. a `git worktree` of an
older commit), alternating with this tree's in fresh processes, and prints both side by side.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _environs(calls: int) -> list[dict[str, Any]]:
    from urllib.parse import urlencode

    import stripe
    from stripe._encode import _api_encode
    from werkzeug.test import EnvironBuilder

    out = []
    for _ in range(calls):
        params = {
            "amount": 100000, "currency": "inr", "payment_method": "pm_card_visa", "payment_method_types": ["card"],
            "confirm": True, "metadata": {"payment_id": str(uuid.uuid4())},
            "expand": ["payment_method", "latest_charge"],
        }
        body = urlencode(list(_api_encode(params))).encode()
        headers = {
            "Authorization": "Bearer sk_test_sandbox", "Idempotency-Key": str(uuid.uuid4()),
            "Stripe-Version": stripe.api_version, "User-Agent": "Stripe/v1 PythonBindings/bench",
        }
        out.append(EnvironBuilder(path="/stripe/v1/payment_intents", method="POST", data=body, headers=headers,
                                  content_type="application/x-www-form-urlencoded").get_environ())
    return out


def measure(calls: int, warmup: int) -> dict[str, Any]:
    """CPU and wall ms per create+confirm, in this process, of the gateway_sandbox on sys.path."""
    import gateway_sandbox
    from gateway_sandbox import SandboxConfig, create_sandbox_app
    from gateway_sandbox.core import EXTENSION_KEY
    from gateway_sandbox.faults import FaultRule
    from gateway_sandbox.server import freeze_what_survived

    gc.callbacks.append(freeze_what_survived)  # as the standalone sandbox does
    app = create_sandbox_app(SandboxConfig())
    sb = app.extensions[EXTENSION_KEY]
    sb.faults.add(FaultRule(mode="latency", path=r"/payment_intents$", method="POST", latency_ms=0, remaining=None))
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    def drive(environs: list[dict[str, Any]]) -> None:
        for environ in environs:
            body = b"".join(app(environ, start_response))
        assert statuses[-1].startswith("200"), statuses[-1]
        assert json.loads(body)["status"] == "succeeded"
        while sb.webhooks._queue.qsize() or sb.webhooks.log[-1].error is None:  # the webhook thread's share
            time.sleep(0.002)

    drive(_environs(warmup))
    environs = _environs(calls)
    cpu, wall = time.process_time(), time.perf_counter()
    drive(environs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_ms": cpu * 1000 / calls, "wall_ms": wall * 1000 / calls, "code": gateway_sandbox.__file__}


def _child(root: Path, calls: int, warmup: int, threads: bool) -> dict[str, Any]:
    code = f"import json, sys; sys.path.insert(0, {str(root)!r}); sys.path.insert(1, {str(REPO / 'bench')!r}); " \
           f"import sandbox_cpu; print(json.dumps(sandbox_cpu.measure({calls}, {warmup})))"
    if not threads:  # as `payment-service sandbox` runs it: gevent, the webhook thread a greenlet
        code = "from gevent import monkey; monkey.patch_all(); " + code
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd="/")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per tree, alternating")
    ap.add_argument("--threads", action="store_true", help="without gevent's monkey-patching (as in the tests)")
    ap.add_argument("--against", type=Path, help="another checkout whose gateway_sandbox to compare with")
    args = ap.parse_args()
    trees = ([("against", args.against)] if args.against else []) + [("this tree", REPO)]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, root in trees:
            results[name].append(_child(root, args.calls, args.warmup, args.threads))
    print(f"{args.calls} Stripe PaymentIntent create+confirm calls per process, {args.rounds} processes per tree, "
          f"{'threads' if args.threads else 'gevent'}")
    print(f"{'tree':<12} {'CPU ms/call (median)':>21} {'all rounds':>24} {'wall ms/call':>13}")
    for name, _ in trees:
        cpus = [r["cpu_ms"] for r in results[name]]
        walls = [r["wall_ms"] for r in results[name]]
        rounds = " ".join(f"{c:.3f}" for c in cpus)
        print(f"{name:<12} {statistics.median(cpus):>21.3f} {rounds:>24} {statistics.median(walls):>13.3f}"
              f"  {Path(results[name][0]['code']).parent}")
    if args.against:
        base, new = (statistics.median(r["cpu_ms"] for r in results[n]) for n, _ in trees)
        print(f"this tree / against: {new / base:.2f}")


if __name__ == "__main__":
    main()
