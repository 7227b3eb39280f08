"""The webhook inbox as the on-call person watches it, read from the database at scrape time.

Like the lifecycle figures, these come from the table, not from counters in one process, so every
worker replica's work shows. Each query is a range of ix_gateway_events_status_next (status, then
the time the row was last moved: when it came in, is due again, or was settled), so a scrape costs
the size of the backlog and of the last five minutes, never of the whole inbox.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from .orm import GatewayEventRow

logger = logging.getLogger(__name__)

WAITING = ("RECEIVED", "RETRY", "PROCESSING")
SETTLED = ("APPLIED", "IGNORED", "NOT_OURS", "FAILED")
RECENT = timedelta(minutes=5)


class WebhookInboxCollector(Collector):
    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        engine = self.engine()
        if engine is None:
            return
        t = GatewayEventRow
        waiting = GaugeMetricFamily(
            "payment_webhook_events_waiting",
            "Stored events not settled yet: RECEIVED (never tried), RETRY (an id of ours not found yet), "
            "PROCESSING (with an applier)", labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "payment_webhook_oldest_unapplied_seconds",
            "Age of the oldest event never tried: how far the appliers are behind (0: none waiting)",
        )
        failed = GaugeMetricFamily(
            "payment_webhook_events_failed",
            "Events given up on (an id of ours never found, or applying kept failing): a person must look",
        )
        recent = GaugeMetricFamily(
            "payment_webhook_events_settled_recently",
            "Events settled in the last 5 minutes, by outcome (NOT_OURS: not for this service)",
            labels=["outcome"],
        )
        now = datetime.now(UTC)
        try:
            with engine.connect() as conn:
                counts = {s: n for s, n in conn.execute(
                    select(t.status, func.count()).where(t.status.in_(WAITING)).group_by(t.status)
                )}
                first = conn.execute(select(func.min(t.next_attempt_at)).where(t.status == "RECEIVED")).scalar()
                failed.add_metric([], conn.execute(select(func.count()).where(t.status == "FAILED")).scalar_one())
                settled = {s: n for s, n in conn.execute(
                    select(t.status, func.count())
                    .where(t.status.in_(SETTLED), t.next_attempt_at >= now - RECENT)
                    .group_by(t.status)
                )}
        except Exception:  # noqa: BLE001 - a scrape must answer even with the database down
            logger.warning("webhook inbox metrics unavailable", exc_info=True)
            return
        for status in WAITING:
            waiting.add_metric([status], counts.get(status, 0))
        behind = 0.0 if first is None else (now - first.replace(tzinfo=UTC)).total_seconds()
        oldest.add_metric([], max(0.0, behind))
        for status in SETTLED:
            recent.add_metric([status], settled.get(status, 0))
        yield from (waiting, oldest, failed, recent)
