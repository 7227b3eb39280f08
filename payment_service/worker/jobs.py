"""The worker process: the webhook applier, and APScheduler running the sweeps and the purge.

The applier runs back to back while events are due (a short sleep when none is); each sweep run
goes on while records are due, its gateway calls on SWEEP_CONCURRENCY threads. Every part is safe
with several workers at once (claims with SKIP LOCKED, guarded transitions), so the worker scales
out as replicas like the API; SIGTERM stops it at once (work claimed and not started is given back).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ..bootstrap import Container
from ..domain.events import utcnow
from ..services import webhooks
from ..services.lifecycle import Stop

logger = logging.getLogger(__name__)


def purge(container: Container) -> dict[str, int]:
    """The retention purges (bootstrap's table), each in small batches: table -> rows deleted."""
    out = {name: run() for name, run in container.purges().items()}
    if any(out.values()):  # --- audit trail: a purge that removed rows says so
        from ..domain import audit

        summary = "retention purge: " + ", ".join(f"{n} {name}" for name, n in out.items() if n)
        container.audit_store().append(audit.event(
            utcnow(), "retention.purge", audit.SUCCEEDED, summary, ctx=audit.AuditContext(audit.Actor("job", "purge"))))
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


def sweep(container: Container, name: str, stop: Stop | None = None) -> int:
    """One run of the sweep `name` from bootstrap's table (until nothing is due); records finished."""
    table = {row.name: row for row in container.sweeps()}
    return table[name].run(stop).finished


def expire(container: Container, stop: Stop | None = None) -> int:
    return sweep(container, "expire_pending_3ds", stop)


def reconcile(container: Container, stop: Stop | None = None) -> int:
    return sweep(container, "reconcile_pending", stop)


def retry_refunds(container: Container, stop: Stop | None = None) -> int:
    return sweep(container, "retry_pending_refunds", stop)


def resolve_payouts(container: Container, stop: Stop | None = None) -> int:
    return sweep(container, "resolve_payouts", stop)


# --- settlement reconciliation (issue 13) ---
def reconcile_previous_day(container: Container, now: Any = None) -> dict[str, int | None]:
    """The nightly settlement reconciliation: the last day that ended RECONCILE_DAY_DELAY_SECONDS ago, per
    gateway, once (whichever worker claims it first; a failed run is retried on the next tick). Returns the
    differences found per gateway (None: already done, or failed; see the log and reconcile_runs)."""
    from datetime import timedelta

    from ..adapters.reconciliation_store import write_report
    from ..services import reconciliation

    c, s = container, container.settings
    now = now or utcnow()
    day = (now - timedelta(seconds=s.RECONCILE_DAY_DELAY_SECONDS)).date() - timedelta(days=1)
    ledger, runs = c.settlement()
    out: dict[str, int | None] = {}
    gateways = c.gateways()
    for name in [g.strip() for g in s.RECONCILE_DAY_GATEWAYS.split(",") if g.strip()]:
        out[name] = None
        if name not in gateways:
            logger.warning("settlement reconciliation: no such gateway", extra={"gateway": name})
            continue
        try:
            report = reconciliation.run_day(
                gateways[name], ledger, runs, day, utcnow, trigger="nightly", exclusive=True,
                write_report=lambda r: write_report(s.RECONCILE_REPORT_DIR, r),
            )
        except Exception:  # noqa: BLE001 - recorded on the run as FAILED; the next tick tries again
            logger.exception("settlement reconciliation failed", extra={"gateway": name, "day": day.isoformat()})
            continue
        out[name] = None if report is None else len(report.differences)
    return out


# --- end settlement reconciliation ---


# --- audit trail (issue 12) ---
def seal_audit(container: Container) -> int:
    """Chain the audit rows written since the last run (adapters/audit_store.py); returns how many."""
    from ..services.audit import seal_pending

    return seal_pending(container.audit_store(), container.settings.AUDIT_HMAC_KEY.encode())


# --- end audit trail ---


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
        "audit_sealed": seal_audit(c),
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
    c = container
    sched = scheduler or BackgroundScheduler(timezone="UTC")
    # The sweeps' first run is at start, not one interval later: a worker that was down comes back
    # to a backlog.
    job_defaults: dict[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
    sweep_defaults = {**job_defaults, "next_run_time": utcnow()}
    for row in c.sweeps():
        sched.add_job(
            _guarded(row.name, functools.partial(row.run, stop)),
            "interval", seconds=row.every_seconds, id=row.name, **sweep_defaults,
        )
    sched.add_job(_guarded("purge", lambda: purge(c)), "interval", seconds=3600, id="purge", **job_defaults)
    sched.add_job(  # the audit trail's sealer (issue 12): chains new rows every few seconds at most
        _guarded("seal_audit", lambda: seal_audit(c)),
        "interval", seconds=c.settings.AUDIT_SEAL_INTERVAL_SECONDS, id="seal_audit", **job_defaults,
    )
    sched.add_job(  # settlement reconciliation (issue 13): the previous day, once per day and gateway
        _guarded("reconcile_day", lambda: reconcile_previous_day(c)),
        "interval", seconds=c.settings.WORKER_RECONCILE_DAY_INTERVAL_SECONDS, id="reconcile_previous_day",
        **sweep_defaults,
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
