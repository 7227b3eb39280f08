"""Fixtures for the adapter tests: one migrated MariaDB database per module, sessions and units of work on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pymysql.connections
import pytest
from sqlalchemy import Engine, delete, text
from sqlalchemy.orm import Session, sessionmaker

from payment_service.adapters import migrate
from payment_service.adapters.orm import (
    GatewayEventRow,
    IdempotencyKeyRow,
    OutboxEventRow,
    RefundRow,
    WithdrawalRequestRow,
)
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.bootstrap import make_engine

THREADS = 8


@pytest.fixture(scope="module")
def engine(fresh_database_url: str) -> Iterator[Engine]:
    migrate.upgrade(fresh_database_url)
    eng = make_engine(fresh_database_url, pool_size=THREADS + 4)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="module")
def uow_factory(session_factory: sessionmaker[Session]) -> Callable[[], SqlAlchemyUnitOfWork]:
    return lambda: SqlAlchemyUnitOfWork(session_factory)


@pytest.fixture
def empty_queues(engine: Engine) -> None:
    """No rows left by earlier tests of the module in the tables that are scanned rather than looked up
    (sweeps, the inbox's claim, the relay's claim); payments go only once their refunds have."""
    with engine.begin() as conn:
        for table in (RefundRow, WithdrawalRequestRow, GatewayEventRow, OutboxEventRow, IdempotencyKeyRow):
            conn.execute(delete(table))


@pytest.fixture
def round_trips(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The queries this thread sends to the server, one entry per round trip (PyMySQL's COM_QUERY),
    once the pool holds a connection (a new one's set-up queries are not the test's)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    sent: list[str] = []
    me = threading.get_ident()
    plain = pymysql.connections.Connection._execute_command

    def counting(self: Any, command: int, sql: Any) -> Any:
        if threading.get_ident() == me and command == pymysql.constants.COMMAND.COM_QUERY:
            sent.append(sql if isinstance(sql, str) else sql.decode())
        return plain(self, command, sql)

    monkeypatch.setattr(pymysql.connections.Connection, "_execute_command", counting)
    yield sent
