"""Settlement reconciliation as the on-call person watches it, read from reconcile_runs at scrape time.

The runs happen in the worker (nightly) or a CLI process, not in the API that is scraped, so the
figures come from the table: per gateway, the differences of the latest finished run and the day it
covered, and when a run last finished and last failed. A few rows per gateway, read through
`ix_reconcile_runs_gateway_day`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Table, func, select

from ..services.reconciliation import KINDS
from .orm import ReconcileRunRow

logger = logging.getLogger(__name__)

_runs: Table = ReconcileRunRow.__table__  # type: ignore[assignment]


def _epoch(value: datetime | None) -> float:
    return 0.0 if value is None else value.replace(tzinfo=value.tzinfo or UTC).timestamp()


class ReconciliationCollector(Collector):
    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.engine()
        if engine is None:
            return
        differences = GaugeMetricFamily(
            "payment_reconciliation_differences",
            "Differences found by the latest finished settlement reconciliation of the gateway (0: clean)",
            labels=["gateway"],
        )
        by_kind = GaugeMetricFamily(
            "payment_reconciliation_differences_by_kind",
            "The latest finished reconciliation's differences, by kind (docs/reconciliation.md)",
            labels=["gateway", "kind"],
        )
        day = GaugeMetricFamily(
            "payment_reconciliation_day_timestamp_seconds",
            "Start (00:00 UTC) of the day the latest finished reconciliation covered", labels=["gateway"],
        )
        finished = GaugeMetricFamily(
            "payment_reconciliation_last_finished_timestamp_seconds",
            "When a reconciliation of the gateway last finished (clean or not)", labels=["gateway"],
        )
        failed = GaugeMetricFamily(
            "payment_reconciliation_last_failed_timestamp_seconds",
            "When a reconciliation of the gateway last failed (0: never)", labels=["gateway"],
        )
        try:
            with engine.connect() as conn:
                latest_ids = select(func.max(_runs.c.id)).where(
                    _runs.c.status.in_(("CLEAN", "DIFFERENCES"))).group_by(_runs.c.gateway)
                rows = conn.execute(
                    select(_runs.c.gateway, _runs.c.day, _runs.c.finished_at, _runs.c.differences, _runs.c.report)
                    .where(_runs.c.id.in_(latest_ids))
                ).all()
                failures = conn.execute(
                    select(_runs.c.gateway, func.max(_runs.c.finished_at)).where(_runs.c.status == "FAILED")
                    .group_by(_runs.c.gateway)
                ).all()
        except Exception:  # noqa: BLE001 - a scrape must answer even with the database down
            logger.warning("reconciliation metrics unavailable", exc_info=True)
            return
        for gateway, run_day, finished_at, count, report in rows:
            differences.add_metric([gateway], count or 0)
            day.add_metric([gateway], datetime(run_day.year, run_day.month, run_day.day, tzinfo=UTC).timestamp())
            finished.add_metric([gateway], _epoch(finished_at))
            counts = (json.loads(report) if report else {}).get("counts", {})
            for kind in KINDS:
                by_kind.add_metric([gateway, kind], counts.get(kind, 0))
        for gateway, at in failures:
            failed.add_metric([gateway], _epoch(at))
        yield from (differences, by_kind, day, finished, failed)
