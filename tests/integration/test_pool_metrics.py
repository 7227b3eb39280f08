"""The database pool on /metrics (adapters/pool_metrics.py), on the real database: checkouts are timed,
connections in use and waiters are counted, and a connection is held only while it is in use."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from config import load_settings
from payment_service.bootstrap import bootstrap

pytestmark = pytest.mark.integration


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_pool_size_checkouts_and_waiters(database_url: str) -> None:
    container = bootstrap(load_settings(DATABASE_URL=database_url, DB_POOL_SIZE=2, DB_POOL_MAX_OVERFLOW=0,
                                        DB_POOL_TIMEOUT_SECONDS=10.0))
    engine = container.engine
    try:
        checkouts = value("db_pool_checkout_seconds_count")
        in_use = value("db_pool_checked_out")
        assert value("db_pool_max_connections") >= 2
        with engine.connect() as a:
            a.execute(text("SELECT 1"))
            assert value("db_pool_checked_out") == in_use + 1
        assert value("db_pool_checked_out") == in_use
        assert value("db_pool_checkout_seconds_count") == checkouts + 1
        assert value("db_pool_hold_seconds_count") >= 1

        # Both connections taken: a third caller waits, and is counted while it does.
        first, second = engine.connect(), engine.connect()
        waiting = threading.Event()
        done = threading.Event()

        def third() -> None:
            waiting.set()
            with engine.connect() as c:
                c.execute(text("SELECT 1"))
            done.set()

        thread = threading.Thread(target=third)
        waiters = value("db_pool_waiters")
        thread.start()
        waiting.wait(5)
        for _ in range(100):
            if value("db_pool_waiters") == waiters + 1:
                break
            threading.Event().wait(0.02)
        assert value("db_pool_waiters") == waiters + 1 and not done.is_set()
        first.close()
        assert done.wait(5)
        thread.join(5)
        second.close()
        assert value("db_pool_waiters") == waiters
    finally:
        container.close()
