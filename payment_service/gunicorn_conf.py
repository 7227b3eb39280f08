"""gunicorn hooks for `payment-service serve` (loaded with `--config python:payment_service.gunicorn_conf`).

Prometheus multiprocess mode: every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR,
and /metrics, answered by whichever worker gets the scrape, adds them up. The files of a previous
run are removed before the workers start, and a worker that exits is marked dead, so its "live"
gauges (pool, breaker state) stop counting.

This module is imported by the gunicorn master before any worker is forked and (under the gevent
worker) before the workers are monkey-patched: it imports nothing at module level but the standard
library.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

OWNED_DIR_ENV = "PAYMENT_SERVICE_OWNS_METRICS_DIR"


def on_starting(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.environ.get(OWNED_DIR_ENV) == path:  # a directory `serve` made for this run only
        shutil.rmtree(path, ignore_errors=True)


def post_worker_init(worker: Any) -> None:
    """Once the worker has loaded the app: its start-up heap out of the collector's full scans (startup.py)."""
    from payment_service.startup import freeze_startup_heap

    freeze_startup_heap()
