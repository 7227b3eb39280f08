"""Writes whose answer nobody reads go to MySQL with the transaction's COMMIT, in one round trip.

A top-up's last transaction is a guarded UPDATE (its row count decides what happens next), then an
outbox row, the idempotency key's stored answer and an audit row, then COMMIT: nothing reads the
answer of the last three. Each round trip parks the request's greenlet until the database answers
and puts it back at the end of the event loop's queue, behind every other request of the worker;
under load that wait, not the send, is what a round trip costs (docs/benchmarks.md, issue 10).
So a statement executed with the execution option `DEFER` is not sent: the driver renders it (the
same text `cursor.execute` would send, every parameter escaped by PyMySQL) and it waits on the
connection. The COMMIT then sends `w1; w2; ...; COMMIT` as one multi-statement query and reads every
answer. The first write that fails stops the rest, the COMMIT included: the transaction is rolled
back, the writes that ran included, and the commit raises that statement's error. A statement sent
while writes wait takes them along, in front of it in the same query (`w1; w2; statement`), so
deferring never reorders what the database sees, and a write that fails raises from that statement,
which then does not run; a rollback drops them. A top-up is 4 round trips instead of 9: its
idempotency key's INSERT rides with the fraud check's SELECT (repository.py, `KeyTaken`).

Only MySQL / MariaDB (PyMySQL) defers. Elsewhere (SQLite for the local run) `DEFER` changes nothing:
each statement runs where it is issued. Multi-statement queries are allowed on these connections
(`CLIENT.MULTI_STATEMENTS`); every statement is still built by SQLAlchemy with bound parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from pymysql.constants import CLIENT
from sqlalchemy import Engine, event

DEFER: dict[str, Any] = {"defer_to_commit": True}  # execution options of a deferred write

_PENDING = "_payment_service_deferred"  # attribute on the PyMySQL connection: the rendered writes


def install(engine: Engine) -> None:
    """Defer on this engine's MySQL connections; nothing to do on any other database."""
    if engine.dialect.name != "mysql" or engine.dialect.driver != "pymysql":
        return
    dialect = engine.dialect
    plain_execute, plain_commit, plain_rollback = dialect.do_execute, dialect.do_commit, dialect.do_rollback
    plain_no_params, plain_many = dialect.do_execute_no_params, dialect.do_executemany

    @event.listens_for(engine, "do_connect")
    def _multi_statements(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        # SQLAlchemy already put FOUND_ROWS here (a guarded UPDATE counts the rows it matched).
        cparams["client_flag"] = cparams.get("client_flag", 0) | CLIENT.MULTI_STATEMENTS

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        if context is not None and context.execution_options.get("defer_to_commit"):
            defer_sql(cursor.connection, cursor.mogrify(statement, parameters))
            cursor.lastrowid = None  # answered as a statement with no result: no rows, no row count, no id
            return
        if waiting(cursor.connection):
            _with_writes(cursor, cursor.mogrify(statement, parameters))
            return
        plain_execute(cursor, statement, parameters, context)

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        if waiting(cursor.connection):
            _with_writes(cursor, statement)
            return
        plain_no_params(cursor, statement, context)

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        flush(cursor.connection)
        plain_many(cursor, statement, parameters, context)

    def do_commit(dbapi_connection: Any) -> None:
        writes = _take(dbapi_connection)
        if not writes:
            plain_commit(dbapi_connection)
            return
        try:
            _send(dbapi_connection, [*writes, "COMMIT"])
        except BaseException:
            # A write failed and the COMMIT never ran, but SQLAlchemy takes a failed commit for a
            # transaction the server already ended, and will not roll back: end it here.
            with contextlib.suppress(Exception):
                plain_rollback(dbapi_connection)
            raise

    def do_rollback(dbapi_connection: Any) -> None:
        _take(dbapi_connection)
        plain_rollback(dbapi_connection)

    # Instance attributes: this engine's dialect only (each engine has its own dialect object).
    dialect.do_execute = do_execute  # type: ignore[method-assign]
    dialect.do_execute_no_params = do_execute_no_params  # type: ignore[method-assign]
    dialect.do_executemany = do_executemany  # type: ignore[method-assign]
    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def defer_sql(dbapi_connection: Any, sql: str) -> None:
    """Queue `sql`, already rendered for this connection, for the next statement or the COMMIT."""
    dbapi_connection = _raw(dbapi_connection)
    pending: list[str] | None = getattr(dbapi_connection, _PENDING, None)
    if pending is None:
        pending = []
        setattr(dbapi_connection, _PENDING, pending)
    pending.append(sql)


def waiting(dbapi_connection: Any) -> bool:
    """Whether writes wait on this connection for the next statement or the COMMIT."""
    return bool(getattr(_raw(dbapi_connection), _PENDING, None))


def _with_writes(cursor: Any, sql: str) -> None:
    """The waiting writes and `sql` (rendered) in one round trip: the cursor is left on the statement's
    own answer (its rows, row count and id), the writes' answers read first."""
    writes = _take(cursor.connection)
    cursor.execute(";\n".join([*writes, sql]))  # no arguments: sent as it is
    for _ in writes:
        cursor.nextset()


def flush(dbapi_connection: Any) -> None:
    """Send the writes waiting on this connection now (executemany sends its own statement after them)."""
    writes = _take(dbapi_connection)
    if writes:
        _send(dbapi_connection, writes)


def _take(dbapi_connection: Any) -> list[str]:
    dbapi_connection = _raw(dbapi_connection)
    pending: list[str] | None = getattr(dbapi_connection, _PENDING, None)
    if not pending:
        return []
    setattr(dbapi_connection, _PENDING, [])
    return pending


def _raw(connection: Any) -> Any:
    """The PyMySQL connection itself: SQLAlchemy commits through the pool's proxy of it, whose
    attributes are its own (a list set there would not be the one the cursor's connection holds)."""
    return getattr(connection, "dbapi_connection", connection)


def _send(dbapi_connection: Any, statements: Sequence[str]) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # No arguments: PyMySQL sends the text as it is (each write was rendered with its own).
        cursor.execute(";\n".join(statements))
        while cursor.nextset():  # read every statement's answer; an error raises here
            pass
    finally:
        cursor.close()
