"""What the on-call person watches of the money lifecycle, read from the database at scrape time.

Counters kept in a process would lose what another process (a worker replica) saw, so the figures
come from the tables themselves: open records by kind and status, those a sweep failed on (a
`last_error` on an open record), claims held right now, and the late-success refunds (rule 8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from ..domain import lifecycle
from .orm import RefundRow
from .repository import _RECORD_TABLES

logger = logging.getLogger(__name__)

_LATE_REASONS = (lifecycle.EXPIRED_THEN_REFUNDED, lifecycle.FAILED_THEN_REFUNDED, lifecycle.LATE_SUCCESS_REASON)


class LifecycleCollector(Collector):
    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.engine()
        if engine is None:
            return
        open_records = GaugeMetricFamily(
            "payment_lifecycle_open_records", "Records the gateway still owes an answer about",
            labels=["kind", "status"],
        )
        failing = GaugeMetricFamily(
            "payment_lifecycle_failing_records",
            "Open records whose last sweep attempt failed (see last_error)", labels=["kind"],
        )
        claimed = GaugeMetricFamily(
            "payment_lifecycle_claimed_records", "Open records claimed right now (a gateway call in flight)",
            labels=["kind"],
        )
        late = GaugeMetricFamily(
            "payment_late_success_refunds", "Refunds of money taken after a payment was closed (rule 8)",
            labels=["status"],
        )
        now = datetime.now(UTC)  # the columns are UTCDateTime: they refuse a naive datetime
        try:
            with engine.connect() as conn:
                for kind, (table, _) in _RECORD_TABLES.items():
                    statuses = sorted(lifecycle.LIFECYCLES[kind].open)
                    where = table.c.status.in_(statuses)
                    for status, n in conn.execute(select(table.c.status, func.count()).where(where)
                                                  .group_by(table.c.status)):
                        open_records.add_metric([kind, status], n)
                    failing.add_metric([kind], conn.execute(
                        select(func.count()).where(where, table.c.last_error.is_not(None))).scalar_one())
                    claimed.add_metric([kind], conn.execute(
                        select(func.count()).where(where, table.c.claimed_until > now)).scalar_one())
                for status, n in conn.execute(
                    select(RefundRow.status, func.count()).where(RefundRow.reason.in_(_LATE_REASONS))
                    .group_by(RefundRow.status)
                ):
                    late.add_metric([status], n)
        except Exception:  # noqa: BLE001 - a scrape must answer even with the database down
            logger.warning("lifecycle metrics unavailable", exc_info=True)
            return
        yield from (open_records, failing, claimed, late)
