"""Audit trail use cases: seal, verify, export, purge, read; over the `AuditLog` / `AuditStore` abstractions.

Standard library only. Rows are written where things change (domain/audit.py says who writes what);
the chain is built by `seal_pending`, a step apart from the writers so that no transaction in the
service waits on another to write its row (docs/audit.md: why, and what it costs).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from ..domain import audit
from ..domain.audit import AuditEvent, ChainHead, VerifyReport


class AuditLog(abc.ABC):
    """Rows written inside the caller's transaction (a unit of work, a CLI session)."""

    @abc.abstractmethod
    def add(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True)
class AuditFilter:
    resource_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class PurgeReport:
    removed: int
    anchor_seq: int


class AuditStore(abc.ABC):
    """The table as a whole; each method is its own transaction."""

    @abc.abstractmethod
    def append(self, event: AuditEvent) -> None:
        """Write one row in a transaction of its own (an API call's row, written after its answer)."""

    @abc.abstractmethod
    def seal(self, key: bytes, batch: int) -> int:
        """Chain up to `batch` unsealed rows, oldest id first, after the head (under the head's row
        lock); returns how many."""

    @abc.abstractmethod
    def head(self) -> ChainHead: ...

    @abc.abstractmethod
    def sealed(self, after_seq: int, up_to_seq: int) -> Iterator[AuditEvent]:
        """Sealed rows with after_seq < seq <= up_to_seq, in seq order."""

    @abc.abstractmethod
    def unsealed_count(self) -> int: ...

    @abc.abstractmethod
    def between(self, since: datetime | None, until: datetime | None) -> Iterator[AuditEvent]:
        """Rows with since <= occurred_at < until, oldest first (export)."""

    @abc.abstractmethod
    def purge_before(self, key: bytes, before: datetime) -> PurgeReport:
        """Delete the longest sealed prefix of the chain older than `before`; the chain's anchor moves
        to its last row, so what remains still verifies."""

    @abc.abstractmethod
    def page(self, flt: AuditFilter, limit: int, before_id: int | None) -> list[AuditEvent]:
        """Newest first (by id), at most `limit`, ids below `before_id` when given."""


def seal_pending(store: AuditStore, key: bytes, batch: int = 200) -> int:
    """Seal every row waiting; returns how many."""
    total = 0
    while True:
        n = store.seal(key, batch)
        total += n
        if n < batch:
            return total


def verify(store: AuditStore, key: bytes, *, seal_first: bool = True) -> VerifyReport:
    """Walk the whole chain; the report names the first row changed, removed or out of place."""
    if seal_first:
        try:
            seal_pending(store, key)
        except audit.ChainHeadTampered:
            pass  # reported below, by the walk
    head = store.head()
    report = audit.verify_chain(key, head, store.sealed(head.anchor_seq, head.last_seq))
    report.unsealed = store.unsealed_count()
    return report


def purge(store: AuditStore, key: bytes, before: datetime, at: datetime) -> PurgeReport:
    """Retention: seal what waits, drop the chain's prefix older than `before`, and record the purge
    (a row of its own, by the current actor: the operator)."""
    seal_pending(store, key)
    report = store.purge_before(key, before)
    store.append(audit.event(
        at, "audit.purge", audit.SUCCEEDED,
        f"purged {report.removed} row(s) older than {before.isoformat()}; chain anchored at seq {report.anchor_seq}",
        resource_type="audit_events",
    ))
    return report
