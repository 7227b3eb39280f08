"""Benchmark: how long the unit lane (`pytest -m unit`) takes, and where the time goes.

Not a test: it prints figures. Runs `pytest -q -m unit -p no:cacheprovider` `--runs` times as a
child process and prints, for each run, the wall-clock time, the child's CPU time (user + system:
what the lane costs on an idle machine, whatever the load now), the number of tests, and the time
of collection alone (`--collect-only`). The target is under 30 s wall-clock (docs/testing.md).

    .venv/bin/python bench/unit_lane.py [--runs 3] [--slowest 10]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-m", "unit", "-p", "no:cacheprovider"]


def timed(args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, its output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False, env=os.environ.copy())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode not in (0, 1):  # 1: some test failed, still a timing
        sys.exit(f"pytest exited {out.returncode}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return wall, cpu, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slowest", type=int, default=10, help="show the N slowest test phases of the last run")
    opts = parser.parse_args()

    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.2f}")
    wall, cpu, out = timed([*PYTEST, "--collect-only"])
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", out)
    print(f"collection only: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {collected.group(1) if collected else '?'} tests")
    last = ""
    for i in range(1, opts.runs + 1):
        wall, cpu, last = timed([*PYTEST, f"--durations={opts.slowest}"])
        summary = last.strip().splitlines()[-1] if last.strip() else "?"
        print(f"run {i}: {wall:6.2f} s wall, {cpu:6.2f} s CPU   ({summary.strip('= ')})")
    print(f"\nslowest {opts.slowest} phases of the last run:")
    for line in last.splitlines():
        if re.match(r"^\d+\.\d+s (setup|call|teardown) ", line):
            print("  " + line)


if __name__ == "__main__":
    main()
