"""The outbox's metrics: the relay's own counters, and the backlog read from the database at scrape time.

Importing this module loads neither the relay nor confluent-kafka: the API process registers the
backlog collector for its `/metrics`, and only a process that runs a relay registers the relay's
counters (so an API process does not show a `relay_is_leader` of 0).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from .outbox_store import outbox_stats

logger = logging.getLogger(__name__)

WAKE_MODES = ("binlog", "polling")


@dataclass(frozen=True)
class RelayMetrics:
    published: Counter
    quarantined: Counter
    is_leader: Gauge
    wake_mode: Gauge

    def set_wake_mode(self, mode: str) -> None:
        for m in WAKE_MODES:
            self.wake_mode.labels(m).set(1 if m == mode else 0)


_metrics_lock = threading.Lock()
_relay_metrics: RelayMetrics | None = None


def relay_metrics() -> RelayMetrics:
    """The relay's own metrics, registered when the process first builds a relay."""
    global _relay_metrics
    with _metrics_lock:
        if _relay_metrics is None:
            _relay_metrics = RelayMetrics(
                Counter("outbox_published", "Outbox events confirmed by the broker and marked published"),
                Counter("outbox_quarantined", "Outbox rows set aside and never sent (card number, bad payload)"),
                Gauge("relay_is_leader", "1 while this process's relay holds the outbox lease"),
                Gauge(
                    "relay_wake_mode",
                    "1 for how the leader learns of new outbox rows: binlog (woken on commit) or polling",
                    ["mode"],
                ),
            )
        return _relay_metrics


class OutboxCollector(Collector):
    """`outbox_backlog` and `outbox_oldest_unpublished_age_seconds`, queried when Prometheus scrapes.

    Engine sources are named ("api", "relay") and tried in order; one that returns None (the API's
    outside a request) is skipped. A database that is away leaves the two metrics out of that scrape.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Engine | None]] = {}

    def set_source(self, name: str, source: Callable[[], Engine | None]) -> None:
        self._sources[name] = source

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("outbox_backlog", "Outbox rows waiting to be published")
        yield GaugeMetricFamily("outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row")

    def collect(self) -> Iterator[Metric]:
        engine = next((e for e in (source() for source in list(self._sources.values())) if e is not None), None)
        if engine is None:
            return
        try:
            backlog, age = outbox_stats(engine)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is away
            logger.warning("outbox metrics unavailable", extra={"error": type(exc).__name__})
            return
        yield GaugeMetricFamily("outbox_backlog", "Outbox rows waiting to be published", value=backlog)
        yield GaugeMetricFamily(
            "outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row", value=age
        )


_collector_lock = threading.Lock()
_collector: OutboxCollector | None = None


def install_outbox_collector(
    name: str, source: Callable[[], Engine | None], registry: CollectorRegistry = REGISTRY
) -> OutboxCollector:
    """Register the outbox collector with the registry (once per process) and add an engine source."""
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = OutboxCollector()
            registry.register(_collector)
        _collector.set_source(name, source)
        return _collector


def outbox_collector() -> OutboxCollector | None:
    """The installed collector, for a per-scrape registry (Prometheus multiprocess mode)."""
    return _collector
