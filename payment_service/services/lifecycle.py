"""The machinery every money path shares: walking a record to a status, and sweeping open records.

`walk` is how a gateway's answer lands on a record, whoever brings it (the request, a webhook, a
sweep): guarded moves through the lifecycle of domain/lifecycle.py, re-reading the record when
another path moved it first. `sweep` is how the worker's jobs own what they look at (DESIGN.md
rule 7): a batch claimed in one statement, each record handled on its own, and a record that fails
gets its attempts, next attempt and last error written back instead of stopping the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from ..domain import audit
from ..domain.lifecycle import LIFECYCLES, Lifecycle
from .unit_of_work import AbstractUnitOfWork, Clock, UowFactory

logger = logging.getLogger(__name__)

R = TypeVar("R")

# A record re-read this many times because other paths kept moving it gives up; the moves are
# guarded, so the worst case is a no-op, never a wrong move.
_MAX_REREADS = 4


class UnknownObject(Exception):
    """An answer about something we have not recorded (yet): retry later, never drop."""


def walk(
    uow: AbstractUnitOfWork,
    lifecycle: Lifecycle[Any],
    record: R,
    target: str,
    at: datetime,
    context: Any = None,
    **changes: Any,
) -> tuple[R, bool]:
    """Move `record` to `target` inside the caller's unit of work; returns (record now, moved?).

    `record` may be stale (the request path passes the copy it holds, saving a read): each step is
    a guarded UPDATE, and a step that does not match re-reads the row and walks on from where it
    really is. A target behind or equal to the current status is a no-op.
    """
    moved_any = False
    current: Any = record
    for _ in range(_MAX_REREADS):
        steps = lifecycle.path(current.status, target)
        if not steps:
            return current, moved_any
        for step in steps:
            move = lifecycle.move(current, step, at, context, **changes)
            if not uow.records.move(move):
                break  # another path got there first
            current, moved_any = move.after, True
        else:
            return current, moved_any
        fresh = uow.records.get(lifecycle.kind, current.id)
        if fresh is None:
            raise UnknownObject(f"{lifecycle.kind} {current.id} vanished")
        current = fresh
    logger.warning("record kept moving under us", extra={"kind": lifecycle.kind, "record_id": current.id})
    return current, moved_any


# --- sweeps ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPolicy:
    batch: int = 100
    # How long a sweep owns a record it claimed. A record not started once half of it has gone is
    # given back, so a slow gateway never lets a claim lapse mid-call. A sweep also stops claiming
    # new batches after this long, and the scheduler's next run goes on from there.
    lease_seconds: float = 300.0
    backoff_base_seconds: float = 15.0
    backoff_max_seconds: float = 3600.0
    # Gateway calls in flight at once (one thread each). 1: records handled one after the other,
    # in due order, on the caller's thread.
    concurrency: int = 1

    def backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.backoff_base_seconds * 2 ** max(attempts - 1, 0), self.backoff_max_seconds))


DEFAULT_POLICY = SweepPolicy()


class Stop(Protocol):
    """What tells a loop to stop at once (a `threading.Event` in the worker)."""

    def is_set(self) -> bool: ...


@dataclass
class SweepReport:
    claimed: int = 0
    finished: int = 0  # records that left the swept statuses
    failed: int = 0  # records whose handling raised: kept, with their error, for a later attempt
    returned: int = 0  # records given back unhandled (out of lease, or the worker is stopping)


def sweep(
    name: str,
    uow_factory: UowFactory,
    kind: str,
    statuses: Collection[str],
    handle: Callable[[Any], Any],
    now: Clock,
    policy: SweepPolicy = DEFAULT_POLICY,
    stop: Stop | None = None,
) -> SweepReport:
    """Hand every due, unclaimed record in `statuses` to `handle`, batch after batch, until none is due.

    Each batch is claimed in one statement (`SKIP LOCKED`: replicas never share a record). With
    `policy.concurrency` > 1 the records go to that many threads, and the next batch is claimed
    while the last records of the previous one are still with the gateway, so the calls in flight
    never drop to zero while records are due. `handle(record)` calls the gateway and applies the
    answer; when the record stays open it must release it with when to look again
    (`uow.records.release`), or the claim's expiry does. Whatever it raises is written on the record
    (attempts, next attempt with backoff, last error), and the sweep goes on with the others.
    `stop` set: no record is started any more, those claimed and not started are given back at
    once, and the sweep returns when the calls in flight have answered.
    """
    run = _SweepRun(name, uow_factory, kind, statuses, handle, now, policy, stop)
    return run()


class _SweepRun:
    def __init__(
        self, name: str, uow_factory: UowFactory, kind: str, statuses: Collection[str],
        handle: Callable[[Any], Any], now: Clock, policy: SweepPolicy, stop: Stop | None,
    ) -> None:
        self.name, self.uow_factory, self.kind, self.statuses = name, uow_factory, kind, statuses
        self.handle, self.now, self.policy, self.stop = handle, now, policy, stop
        self.open = LIFECYCLES[kind].open
        self.report = SweepReport()
        self.given_back: list[Any] = []
        self.lock = threading.Condition()
        self.outstanding = 0  # claimed, not yet handled or given back

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def __call__(self) -> SweepReport:
        started = time.monotonic()
        pool = (
            ThreadPoolExecutor(self.policy.concurrency, thread_name_prefix=f"sweep-{self.name}")
            if self.policy.concurrency > 1 else None
        )
        try:
            more = True
            while more and not self.stopping() and time.monotonic() - started < self.policy.lease_seconds:
                if pool is not None:
                    # Claim the next batch once the threads have nothing queued: they never run dry
                    # while records are due, and no more is claimed than they can start soon.
                    with self.lock:
                        while self.outstanding > self.policy.concurrency and not self.stopping():
                            self.lock.wait(0.2)
                    if self.stopping():
                        break
                batch = self._claim()
                more = len(batch) == self.policy.batch
                claimed_at = time.monotonic()
                with self.lock:
                    self.outstanding += len(batch)
                for record in batch:
                    if pool is None:
                        self._one(record, claimed_at)
                    else:
                        pool.submit(self._one, record, claimed_at)
                if pool is None and self.given_back:
                    break  # out of lease: the rest waits for the next run
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            if self.given_back:
                self._give_back()
        if self.report.claimed:
            logger.info("sweep ran", extra={"sweep": self.name, **vars(self.report)})
        return self.report

    def _claim(self) -> list[Any]:
        t = self.now()
        until = t + timedelta(seconds=self.policy.lease_seconds)
        with self.uow_factory() as uow:
            batch = uow.records.claim_due(self.kind, self.statuses, t, until, self.policy.batch)
            uow.commit()
        with self.lock:
            self.report.claimed += len(batch)
        return batch

    def _one(self, record: Any, claimed_at: float) -> None:
        try:
            if self.stopping() or time.monotonic() - claimed_at > self.policy.lease_seconds / 2:
                with self.lock:
                    self.given_back.append(record)
                    self.report.returned += 1
                return
            self._handle(record)
        finally:
            with self.lock:
                self.outstanding -= 1
                self.lock.notify()

    def _handle(self, record: Any) -> None:
        try:
            with audit.acting_as(audit.Actor("job", self.name)):  # audit rows of these moves name the job
                after = self.handle(record)
        except Exception as exc:  # noqa: BLE001 - one record's failure must not stop the others (rule 7)
            attempts = record.attempts + 1
            error = f"{type(exc).__name__}: {exc}"[:2000]
            logger.warning(
                "sweep record failed",
                extra={"sweep": self.name, "kind": self.kind, "record_id": record.id, "attempts": attempts,
                       "error": error},
            )
            with self.uow_factory() as uow:
                uow.records.release(
                    self.kind, record.id, next_attempt_at=self.now() + self.policy.backoff(attempts), error=error
                )
                uow.commit()
            with self.lock:
                self.report.failed += 1
            return
        if after is not None and getattr(after, "status", None) not in self.open:
            with self.lock:
                self.report.finished += 1

    def _give_back(self) -> None:
        t = self.now()
        with self.uow_factory() as uow:
            for record in self.given_back:
                uow.records.release(
                    self.kind, record.id, next_attempt_at=t, error=record.last_error, count_attempt=False
                )
            uow.commit()
