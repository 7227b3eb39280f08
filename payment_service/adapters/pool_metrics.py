"""The database pool on /metrics: how many connections are checked out, how many requests wait for
one, and how long getting one takes.

A request holds a connection only inside its short transactions (two per top-up), never across a
gateway call, so a thousand top-ups in flight need only as many connections as transactions are
running at that instant: `db_pool_checked_out` stays small while `http` concurrency is high, and
`db_pool_waiters` / `db_pool_checkout_seconds` say when the pool itself is the queue.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Engine, event
from sqlalchemy.pool import PoolProxiedConnection, QueuePool

POOL_MAX = Gauge(
    "db_pool_max_connections", "Connections the pool may open (pool size + overflow), summed over processes",
    multiprocess_mode="livesum",
)
POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out", "Connections checked out of the pool right now (a transaction is using them)",
    multiprocess_mode="livesum",
)
POOL_WAITERS = Gauge(
    "db_pool_waiters", "Callers waiting for a connection from the pool right now", multiprocess_mode="livesum",
)
POOL_CHECKOUT_SECONDS = Histogram(
    "db_pool_checkout_seconds", "Time to get a connection from the pool (waiting included)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POOL_HOLD_SECONDS = Histogram(
    "db_pool_hold_seconds", "How long a connection stays checked out (one transaction, or a read)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL_CONNECTS = Counter("db_pool_connections_opened", "New database connections the pool opened")


class InstrumentedQueuePool(QueuePool):
    """SQLAlchemy's QueuePool, timing each checkout and counting who waits for one."""

    def connect(self) -> PoolProxiedConnection:
        POOL_WAITERS.inc()
        started = time.perf_counter()
        try:
            return super().connect()
        finally:
            POOL_WAITERS.dec()
            POOL_CHECKOUT_SECONDS.observe(time.perf_counter() - started)


def instrument_pool(engine: Engine, pool_size: int, max_overflow: int) -> None:
    POOL_MAX.inc(pool_size + max_overflow)

    @event.listens_for(engine, "checkout")
    def _checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        POOL_CHECKED_OUT.inc()
        record.info["checked_out_at"] = time.perf_counter()

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi: Any, record: Any) -> None:
        POOL_CHECKED_OUT.dec()
        started = record.info.pop("checked_out_at", None)
        if started is not None:
            POOL_HOLD_SECONDS.observe(time.perf_counter() - started)

    @event.listens_for(engine, "connect")
    def _connect(*_a: Any) -> None:
        POOL_CONNECTS.inc()
