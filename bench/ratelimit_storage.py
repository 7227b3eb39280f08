"""Benchmark: the CPU one rate-limit hit costs an API worker, limits' `memory://` store against ours.

Not a test: it prints figures. In one process patched by gevent, as an API worker is, a fixed-window
limiter is hit at a steady rate (75 hits a second: one worker's share of 150 top-ups a second) by
callers taken in turn from a set of N, for `--seconds` each; it prints the process's CPU time per hit
minus that of the same loop without the hit (the sleeps' own cost), for

- `MemoryStorage` (limits' `memory://`), whose hits start a 10 ms timer that walks every counter;
- `SweptMemoryStorage` (payment_service/api/ratelimit.py), which drops ended windows as hits go by.

Run:

    .venv/bin/python bench/ratelimit_storage.py [--callers 100,1000,10000] [--rate 75] [--seconds 4]
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from limits import parse  # noqa: E402
from limits.storage import MemoryStorage, Storage  # noqa: E402
from limits.strategies import FixedWindowRateLimiter  # noqa: E402

from payment_service.api.ratelimit import SweptMemoryStorage  # noqa: E402

LIMIT = parse("1000000/minute")  # never reached: every hit is counted, none refused


def cpu_per_tick(storage: Storage | None, callers: int, rate: float, seconds: float) -> float:
    """CPU microseconds per tick of a loop that hits `storage` (or nothing) `rate` times a second."""
    limiter = FixedWindowRateLimiter(storage) if storage is not None else None
    if limiter is not None:
        for i in range(callers):  # every caller has an open window, as after a busy minute
            limiter.hit(LIMIT, f"user:{i}")
    n, start, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        if limiter is not None:
            limiter.hit(LIMIT, f"user:{n % callers}")
        n += 1
        gevent.sleep(1 / rate)
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", default="100,1000,10000")
    ap.add_argument("--rate", type=float, default=75.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    a = ap.parse_args()
    print(f"CPU per hit at {a.rate:.0f} hits/s, in microseconds (the loop's own cost subtracted)")
    print("| callers | memory:// (limits) | ours | loop alone |")
    print("| ---: | ---: | ---: | ---: |")
    for callers in (int(c) for c in a.callers.split(",")):
        base = cpu_per_tick(None, callers, a.rate, a.seconds)
        plain = cpu_per_tick(MemoryStorage(), callers, a.rate, a.seconds) - base
        ours = cpu_per_tick(SweptMemoryStorage(), callers, a.rate, a.seconds) - base
        print(f"| {callers:,} | {plain:,.0f} | {ours:,.0f} | {base:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
