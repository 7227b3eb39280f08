"""Root fixtures: the real parts (MariaDB, a Kafka-compatible broker), started lazily.

Nothing here starts unless a test asks for it, so unit tests need neither. Overrides:

* ``TEST_DATABASE_URL``: use this MySQL/MariaDB server instead of starting a private MariaDB.
  Its user must be allowed to CREATE and DROP databases (``fresh_database_url``).
* ``TEST_KAFKA_BOOTSTRAP_SERVERS``: use this broker instead of starting a private Tansu.

See docs/testing.md.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from localparts.broker import TansuBroker
from localparts.mariadb import MariaDBServer, create_database_at, drop_database_at

# The lanes: `unit` / `integration` / `e2e` markers from each test's directory, and no I/O in `unit`.
pytest_plugins = ["tests.support.lanes", "tests.support.event_contract"]
# tests.support.event_contract: every event a test reads from an events topic (TopicReader) is checked
# against the AsyncAPI document as it is read, and the session broker's events topics whole at the end.

# --- real parts ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """The private MariaDB server of this session (skips when TEST_DATABASE_URL points elsewhere)."""
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("TEST_DATABASE_URL is set: no private MariaDB server in this run")
    with MariaDBServer(durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of the session database (``payments``), shared by every test that asks for it."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    server: MariaDBServer = request.getfixturevalue("mariadb_server")
    return server.url


@pytest.fixture(scope="module")
def fresh_database_url(database_url: str) -> Iterator[str]:
    """A new, empty database on the session server for one test module, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database_at(database_url, name)
    try:
        yield url
    finally:
        drop_database_at(database_url, name)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """The private Tansu broker of this session (skips when TEST_KAFKA_BOOTSTRAP_SERVERS is set).

    Shared by the whole session: a test that stops or restarts a broker (which loses every topic)
    should use ``private_kafka_broker`` instead.
    """
    if os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("TEST_KAFKA_BOOTSTRAP_SERVERS is set: no private broker in this run")
    with TansuBroker() as broker:
        yield broker
        from tests.support.event_contract import check_event_topics

        check_event_topics(broker.bootstrap)  # every event published in the session, read or not


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the session broker."""
    bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        return bootstrap
    broker: TansuBroker = request.getfixturevalue("kafka_broker")
    return broker.bootstrap


@pytest.fixture
def private_kafka_broker() -> Iterator[TansuBroker]:
    """A broker of this test's own, free to kill and restart (always a local Tansu, starts in ~0.1 s)."""
    with TansuBroker() as broker:
        yield broker


# --- app fixtures (lead) ------------------------------------------------------------------
