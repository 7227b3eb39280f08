"""The machinery every money path shares: walking a record to a status, and sweeping open records.

`walk` is how a gateway's answer lands on a record, whoever brings it (the request, a webhook, a
sweep): guarded moves through the lifecycle of domain/lifecycle.py, re-reading the record when
another path moved it first. `sweep` is how the worker's jobs own what they look at (DESIGN.md
rule 7): a batch claimed in one statement, each record handled on its own, and a record that fails
gets its attempts, next attempt and last error written back instead of stopping the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

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
    # How long a sweep owns a record it claimed. A batch stops taking new records once half of it
    # has gone, and gives the rest back, so a slow gateway never lets a claim lapse mid-call.
    lease_seconds: float = 300.0
    backoff_base_seconds: float = 15.0
    backoff_max_seconds: float = 3600.0

    def backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.backoff_base_seconds * 2 ** max(attempts - 1, 0), self.backoff_max_seconds))


DEFAULT_POLICY = SweepPolicy()


@dataclass
class SweepReport:
    claimed: int = 0
    finished: int = 0  # records that left the swept statuses
    failed: int = 0  # records whose handling raised: kept, with their error, for a later attempt
    returned: int = 0  # records given back unhandled (the batch ran out of lease)


def sweep(
    name: str,
    uow_factory: UowFactory,
    kind: str,
    statuses: Collection[str],
    handle: Callable[[Any], Any],
    now: Clock,
    policy: SweepPolicy = DEFAULT_POLICY,
) -> SweepReport:
    """Claim a batch of due, unclaimed records in `statuses` and hand each to `handle`.

    `handle(record)` calls the gateway and applies the answer; when the record stays open it must
    release it with when to look again (`uow.records.release`), or the claim's expiry does.
    Whatever it raises is written on the record (attempts, next attempt with backoff, last error),
    and the sweep goes on with the next one.
    """
    lifecycle = LIFECYCLES[kind]
    t = now()
    with uow_factory() as uow:
        batch = uow.records.claim_due(kind, statuses, t, t + timedelta(seconds=policy.lease_seconds), policy.batch)
        uow.commit()
    report = SweepReport(claimed=len(batch))
    started = time.monotonic()
    for i, record in enumerate(batch):
        if time.monotonic() - started > policy.lease_seconds / 2:
            _give_back(uow_factory, kind, batch[i:], now())
            report.returned = len(batch) - i
            break
        try:
            after = handle(record)
        except Exception as exc:  # noqa: BLE001 - one record's failure must not stop the others (rule 7)
            report.failed += 1
            attempts = record.attempts + 1
            error = f"{type(exc).__name__}: {exc}"[:2000]
            logger.warning(
                "sweep record failed",
                extra={"sweep": name, "kind": kind, "record_id": record.id, "attempts": attempts, "error": error},
            )
            with uow_factory() as uow:
                uow.records.release(kind, record.id, next_attempt_at=now() + policy.backoff(attempts), error=error)
                uow.commit()
            continue
        if after is not None and getattr(after, "status", None) not in lifecycle.open:
            report.finished += 1
    if report.claimed:
        logger.info("sweep ran", extra={"sweep": name, **vars(report)})
    return report


def _give_back(uow_factory: UowFactory, kind: str, records: list[Any], t: datetime) -> None:
    with uow_factory() as uow:
        for record in records:
            uow.records.release(kind, record.id, next_attempt_at=t, error=record.last_error, count_attempt=False)
        uow.commit()
