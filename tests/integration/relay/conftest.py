"""Fixtures for the relay's integration tests: one migrated MariaDB database per module, its outbox emptied per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, delete

from payment_service.adapters import migrate
from payment_service.adapters.orm import OutboxEventRow, RelayLeaseRow

# support.py's checks (assert_in_id_order, running) report as they did inside the test modules.
pytest.register_assert_rewrite("tests.integration.relay.support")


@pytest.fixture(scope="module")
def engine(fresh_database_url: str) -> Iterator[Engine]:
    """The module's own migrated database, READ COMMITTED as the relay runs, with room for several relays."""
    migrate.upgrade(fresh_database_url)
    eng = create_engine(fresh_database_url, isolation_level="READ COMMITTED", pool_size=10)
    yield eng
    eng.dispose()


@pytest.fixture(autouse=True)
def empty_outbox(engine: Engine) -> None:
    """Every test starts with no outbox rows and no lease (a module of tests shares one database)."""
    with engine.begin() as conn:
        conn.execute(delete(OutboxEventRow))
        conn.execute(delete(RelayLeaseRow))
