"""The worker process: APScheduler running the webhook applier and the scheduled jobs.

Every job is safe with several workers at once (conditional UPDATEs and guarded transitions),
so the worker scales out as replicas like the API.
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


def apply_webhooks(container: Container) -> int:
    c = container
    return webhooks.apply_due_events(c.uow_factory, c.gateways(), c.apply_settings())


def expire(container: Container) -> int:
    c = container
    return jobs.expire_pending_3ds(c.uow_factory, c.gateways(), c.payment_settings(), policy=c.sweep_policy()).finished


def reconcile(container: Container) -> int:
    c = container
    return jobs.reconcile_pending(c.uow_factory, c.gateways(), c.payment_settings(), policy=c.sweep_policy()).finished


def retry_refunds(container: Container) -> int:
    c = container
    return refunds.retry_pending_refunds(
        c.uow_factory, c.gateways(), c.refund_settings(), policy=c.sweep_policy()
    ).finished


def resolve_payouts(container: Container) -> int:
    c = container
    return withdrawals.resolve_withdrawals(
        c.uow_factory, c.gateways(), c.withdrawal_settings(), policy=c.sweep_policy()
    ).finished


def run_all_once(container: Container) -> dict[str, Any]:
    """Each job once, in order: for tests and for `payment-service worker --once`."""
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


def build_scheduler(container: Container, scheduler: BackgroundScheduler | None = None) -> BackgroundScheduler:
    c, s = container, container.settings
    sched = scheduler or BackgroundScheduler(timezone="UTC")
    job_defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    sched.add_job(
        _guarded("webhooks", lambda: apply_webhooks(c)),
        "interval", seconds=s.WORKER_WEBHOOK_INTERVAL_SECONDS, id="apply_webhooks", **job_defaults,
    )
    sched.add_job(
        _guarded("expire", lambda: expire(c)),
        "interval", seconds=s.WORKER_EXPIRY_INTERVAL_SECONDS, id="expire_pending_3ds", **job_defaults,
    )
    sched.add_job(
        _guarded("reconcile", lambda: reconcile(c)),
        "interval", seconds=s.WORKER_RECONCILE_INTERVAL_SECONDS, id="reconcile_pending", **job_defaults,
    )
    sched.add_job(_guarded("purge", lambda: purge(c)), "interval", seconds=3600, id="purge", **job_defaults)
    sched.add_job(
        _guarded("refunds", lambda: retry_refunds(c)),
        "interval", seconds=s.WORKER_REFUND_INTERVAL_SECONDS, id="retry_pending_refunds", **job_defaults,
    )
    sched.add_job(
        _guarded("payouts", lambda: resolve_payouts(c)),
        "interval", seconds=s.WORKER_PAYOUT_INTERVAL_SECONDS, id="resolve_payouts", **job_defaults,
    )
    return sched


def run_worker(container: Container) -> None:
    """Run until SIGTERM or SIGINT; the job in flight finishes first."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sched = build_scheduler(container)
    sched.start()
    logger.info("worker started", extra={"jobs": [j.id for j in sched.get_jobs()]})
    stop.wait()
    sched.shutdown(wait=True)
    logger.info("worker stopped")
