"""The worker process: the webhook applier, and APScheduler running the sweeps and the purge.

The applier runs back to back while events are due (a short sleep when none is); each sweep run
goes on while records are due, its gateway calls on SWEEP_CONCURRENCY threads. Every part is safe
with several workers at once (claims with SKIP LOCKED, guarded transitions), so the worker scales
out as replicas like the API; SIGTERM stops it at once (work claimed and not started is given back).
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import delete, select

from ..adapters.orm import IdempotencyKeyRow
from ..bootstrap import Container
from ..domain.events import utcnow
from ..services import jobs, refunds, webhooks, withdrawals
from ..services.lifecycle import Stop

logger = logging.getLogger(__name__)


def purge_idempotency_keys(container: Container, batch: int = 1000) -> int:
    """Delete keys past their expiry (kept at least IDEMPOTENCY_KEY_TTL_SECONDS), in small batches."""
    total = 0
    while True:
        with container.session_factory() as session:
            ids = session.execute(
                select(IdempotencyKeyRow.id).where(IdempotencyKeyRow.expires_at < utcnow()).limit(batch)
            ).scalars().all()
            if not ids:
                return total
            session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.id.in_(ids)))
            session.commit()
        total += len(ids)


def purge(container: Container) -> dict[str, int]:
    out = {"idempotency_keys": purge_idempotency_keys(container)}
    try:
        from .relay import purge_published
    except ImportError:  # pragma: no cover - the relay module ships with the outbox relay
        return out
    retention = timedelta(seconds=container.settings.OUTBOX_RETENTION_SECONDS)
    out["outbox_events"] = purge_published(container.engine, retention)
    return out


def apply_policy(container: Container) -> webhooks.ApplyPolicy:
    s = container.settings
    return container.cached("apply_policy", lambda: webhooks.ApplyPolicy(
        batch=s.WEBHOOK_BATCH_SIZE, retry_share=max(1, s.WEBHOOK_BATCH_SIZE // 10),
        retry_for_seconds=s.WEBHOOK_RETRY_FOR_SECONDS,
    ))


def apply_webhooks(container: Container, stop: Stop | None = None) -> int:
    """Apply every event due now, batch after batch, on the caller's thread; returns how many were
    taken. For tests and `--once`; the worker runs `run_applier`."""
    c = container
    total = 0
    while not (stop is not None and stop.is_set()):
        taken = webhooks.apply_due_events(c.uow_factory, c.gateways(), c.apply_settings(), policy=apply_policy(c),
                                          stop=stop)
        if not taken:
            break
        total += taken
    return total


def run_applier(container: Container, stop: threading.Event) -> None:
    """The worker's webhook applier, until `stop` (services/webhooks.apply_until_stopped)."""
    c = container
    webhooks.apply_until_stopped(
        c.uow_factory, c.gateways(), c.apply_settings(), stop, threads=c.settings.WORKER_APPLIER_THREADS,
        idle_seconds=c.settings.WORKER_WEBHOOK_INTERVAL_SECONDS,
        idle_max_seconds=c.settings.WORKER_WEBHOOK_IDLE_MAX_SECONDS, policy=apply_policy(c),
    )


def expire(container: Container, stop: Stop | None = None) -> int:
    c = container
    return jobs.expire_pending_3ds(
        c.uow_factory, c.gateways(), c.payment_settings(), policy=c.sweep_policy(), stop=stop
    ).finished


def reconcile(container: Container, stop: Stop | None = None) -> int:
    c = container
    return jobs.reconcile_pending(
        c.uow_factory, c.gateways(), c.payment_settings(), policy=c.sweep_policy(), stop=stop
    ).finished


def retry_refunds(container: Container, stop: Stop | None = None) -> int:
    c = container
    return refunds.retry_pending_refunds(
        c.uow_factory, c.gateways(), c.refund_settings(), policy=c.sweep_policy(), stop=stop
    ).finished


def resolve_payouts(container: Container, stop: Stop | None = None) -> int:
    c = container
    return withdrawals.resolve_withdrawals(
        c.uow_factory, c.gateways(), c.withdrawal_settings(), policy=c.sweep_policy(), stop=stop
    ).finished


def run_all_once(container: Container) -> dict[str, Any]:
    """Each job once, in order, each until nothing is due: for tests and `payment-service worker --once`."""
    c = container
    return {
        "webhooks": apply_webhooks(c),
        "expired": expire(c),
        "reconciled": reconcile(c),
        "purged": purge(c),
        "refunds_retried": retry_refunds(c),
        "payouts": resolve_payouts(c),
    }


def _guarded(name: str, fn: Any) -> Any:
    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a failing job must not stop the scheduler; it runs again
            logger.exception("job failed", extra={"job": name})

    return run


def build_scheduler(
    container: Container, scheduler: BackgroundScheduler | None = None, stop: Stop | None = None
) -> BackgroundScheduler:
    """The sweeps and the purge as interval jobs. Each sweep run goes on while records are due (so a
    backlog drains in one run, not one batch per interval) and ends at once when `stop` is set."""
    c, s = container, container.settings
    sched = scheduler or BackgroundScheduler(timezone="UTC")
    # The sweeps' first run is at start, not one interval later: a worker that was down comes back
    # to a backlog.
    job_defaults: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    sweep_defaults = {**job_defaults, "next_run_time": utcnow()}
    sched.add_job(
        _guarded("expire", lambda: expire(c, stop)),
        "interval", seconds=s.WORKER_EXPIRY_INTERVAL_SECONDS, id="expire_pending_3ds", **sweep_defaults,
    )
    sched.add_job(
        _guarded("reconcile", lambda: reconcile(c, stop)),
        "interval", seconds=s.WORKER_RECONCILE_INTERVAL_SECONDS, id="reconcile_pending", **sweep_defaults,
    )
    sched.add_job(_guarded("purge", lambda: purge(c)), "interval", seconds=3600, id="purge", **job_defaults)
    sched.add_job(
        _guarded("refunds", lambda: retry_refunds(c, stop)),
        "interval", seconds=s.WORKER_REFUND_INTERVAL_SECONDS, id="retry_pending_refunds", **sweep_defaults,
    )
    sched.add_job(
        _guarded("payouts", lambda: resolve_payouts(c, stop)),
        "interval", seconds=s.WORKER_PAYOUT_INTERVAL_SECONDS, id="resolve_payouts", **sweep_defaults,
    )
    return sched


class Worker:
    """The worker's parts: the webhook applier (a claiming thread and WORKER_APPLIER_THREADS applying)
    and the scheduled sweeps, with one stop for all of them."""

    def __init__(self, container: Container) -> None:
        # A sweep run now lasts as long as records are due, so the ticks that find it still running
        # are skipped by design: APScheduler's warning about each of them is noise.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        self.container = container
        self.stop = threading.Event()
        self.scheduler = build_scheduler(container, stop=self.stop)
        self.applier = threading.Thread(target=run_applier, args=(container, self.stop), name="webhook-claimer",
                                        daemon=True)

    def start(self) -> None:
        self.applier.start()
        self.scheduler.start()
        logger.info(
            "worker started",
            extra={"jobs": [j.id for j in self.scheduler.get_jobs()],
                   "appliers": self.container.settings.WORKER_APPLIER_THREADS},
        )

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work at once; with `wait`, return when the calls in flight have answered and
        everything claimed and not started has been given back."""
        if self.stop.is_set():
            return
        self.stop.set()
        self.scheduler.shutdown(wait=wait)
        if wait:
            self.applier.join()


def run_worker(container: Container) -> None:
    """Run until SIGTERM or SIGINT; then stop at once (see Worker.shutdown)."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    worker = Worker(container)
    worker.start()
    stopping.wait()
    worker.shutdown(wait=True)
    logger.info("worker stopped")
