"""The relay woken by the binary log, falling back to polling without it, and losing its lease mid-batch.

Real MariaDB (started with log-bin, binlog_format=ROW) and real Tansu. Where the binlog must be
unavailable, the watcher connects as a user of its own without the replication grants, so the
relay's own connection (and every other test) is unaffected.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select, text, update
from sqlalchemy.engine import make_url

from localparts.broker import TansuBroker
from localparts.topic_reader import TopicReader
from payment_service.adapters.orm import RelayLeaseRow
from payment_service.adapters.outbox_store import LEASE_NAME
from payment_service.worker.relay import OutboxRelay
from tests.integration.relay.support import (
    assert_in_id_order,
    captured,
    make_relay,
    outbox_rows,
    relay_settings,
    running,
    unpublished,
    write,
)
from tests.support.waiting import wait_for as wait_until

pytestmark = pytest.mark.integration


class BinlogUser:
    """A database user for the binlog watcher alone, whose replication grants a test gives and takes."""

    def __init__(self, engine: Engine, *, replication: bool) -> None:
        self.engine = engine
        self.name = f"rb_{uuid.uuid4().hex[:10]}"
        password = secrets.token_hex(8)
        database = engine.url.database
        self._sql(f"CREATE USER '{self.name}'@'%' IDENTIFIED BY '{password}'")
        self._sql(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{self.name}'@'%'")
        if replication:
            self.grant()
        self.url = make_url(engine.url.render_as_string(hide_password=False)).set(
            username=self.name, password=password
        ).render_as_string(hide_password=False)

    def _sql(self, statement: str) -> None:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(statement))

    def grant(self) -> None:
        self._sql(f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{self.name}'@'%'")

    def revoke_and_disconnect(self) -> None:
        """What a DBA's REVOKE and a dropped connection look like to the watcher."""
        self._sql(f"REVOKE REPLICATION SLAVE, REPLICATION CLIENT ON *.* FROM '{self.name}'@'%'")
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            ids = conn.execute(
                text("SELECT id FROM information_schema.processlist WHERE user = :u"), {"u": self.name}
            ).scalars().all()
            for connection_id in ids:
                conn.execute(text(f"KILL CONNECTION {int(connection_id)}"))

    def drop(self) -> None:
        self._sql(f"DROP USER IF EXISTS '{self.name}'@'%'")


def wake_mode_metric(mode: str) -> float | None:
    return REGISTRY.get_sample_value("relay_wake_mode", {"mode": mode})


class ClaimCounter:
    """Counts the relay's claims (each a query to the database)."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.count = 0
        claim = relay.store.claim

        def counting(*args: Any, **kw: Any) -> Any:
            self.count += 1
            return claim(*args, **kw)

        relay.store.claim = counting  # type: ignore[method-assign]


def test_wakes_on_commit_from_the_binlog_and_does_not_poll_when_idle(
    engine: Engine, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="payment_service")
    settings = relay_settings(engine, kafka_bootstrap)
    # No safety poll in this test, and a slow idle poll: only the binlog can explain a fast publish.
    relay = make_relay(engine, settings, idle_poll=5.0, binlog_safety_poll=60.0)
    claims = ClaimCounter(relay)
    with running(relay):
        wait_until(lambda: relay.waker.announced, 15, "the relay to choose its wake-up mode")
        assert relay.waker.mode == "binlog", relay.waker.watcher.reason if relay.waker.watcher else None
        assert wake_mode_metric("binlog") == 1 and wake_mode_metric("polling") == 0
        time.sleep(0.5)  # the start's own looks
        before = claims.count
        time.sleep(2.0)
        idle_claims = claims.count - before
        for i in range(3):
            started = time.monotonic()
            write(engine, captured("u_wake"))
            wait_until(lambda: unpublished(engine) == 0, 5, "the row published")
            took = time.monotonic() - started
            assert took < 3.0, f"published {took:.2f} s after the commit: not woken by the binlog"
            time.sleep(0.3 * i)
    assert idle_claims == 0
    assert relay.published_count == 3
    started_mode = [r for r in caplog.records if r.getMessage() == "relay wake-up mode"]
    assert [r.mode for r in started_mode] == ["binlog"]  # type: ignore[attr-defined]


def test_binlog_unavailable_at_start_the_relay_polls_and_says_why(
    engine: Engine, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="payment_service")
    user = BinlogUser(engine, replication=False)
    try:
        settings = relay_settings(engine, kafka_bootstrap)
        relay = make_relay(engine, settings, binlog_url=user.url, idle_poll=0.3, binlog_retry_max=60.0)
        claims = ClaimCounter(relay)
        with running(relay):
            wait_until(lambda: relay.waker.announced, 15, "the relay to choose its wake-up mode")
            assert relay.waker.mode == "polling"
            assert wake_mode_metric("polling") == 1 and wake_mode_metric("binlog") == 0
            write(engine, *(captured(f"u_{i % 3}") for i in range(20)))
            wait_until(lambda: unpublished(engine) == 0, 10, "rows published by polling")
            time.sleep(3.0)  # idle: the polls slow down to idle_poll
            before = claims.count
            time.sleep(3.0)
            idle_rate = (claims.count - before) / 3.0
        assert relay.published_count == 20
        assert idle_rate <= 1 / 0.3 + 0.5, idle_rate
        record = next(r for r in caplog.records if r.getMessage() == "relay wake-up mode")
        assert record.mode == "polling"  # type: ignore[attr-defined]
        assert "privilege" in record.reason  # type: ignore[attr-defined]
    finally:
        user.drop()


def test_binlog_connection_dropped_and_restored(
    engine: Engine, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="payment_service")
    user = BinlogUser(engine, replication=True)
    try:
        settings = relay_settings(engine, kafka_bootstrap)
        # Polling slowly (5 s when idle): a publish within 3 s of a commit after the restore is the binlog's.
        relay = make_relay(engine, settings, binlog_url=user.url, idle_poll=5.0, binlog_retry_max=0.5)
        users = [f"u_{i}" for i in range(4)]
        with running(relay):
            wait_until(lambda: relay.waker.announced and relay.waker.mode == "binlog", 15, "binlog mode")
            write(engine, *(captured(users[i % 4]) for i in range(10)))
            wait_until(lambda: unpublished(engine) == 0, 10, "rows published while following the binlog")

            user.revoke_and_disconnect()
            wait_until(lambda: relay.waker.mode == "polling", 15, "the relay to fall back to polling")
            assert wake_mode_metric("polling") == 1
            for i in range(10):  # written while there is no binlog stream
                write(engine, captured(users[i % 4]))
            wait_until(lambda: unpublished(engine) == 0, 15, "rows published by polling")

            user.grant()
            wait_until(lambda: relay.waker.mode == "binlog", 15, "the binlog stream to be restored")
            assert wake_mode_metric("binlog") == 1
            time.sleep(1.0)  # the restore's own looks are over: the relay waits for the binlog now
            started = time.monotonic()
            write(engine, *(captured(users[i % 4]) for i in range(10)))
            wait_until(lambda: unpublished(engine) == 0, 10, "rows published after the restore")
            assert time.monotonic() - started < 3.0
        rows = outbox_rows(engine)
        assert relay.published_count == len(rows) == 30
        with TopicReader(kafka_bootstrap, settings.EVENTS_TOPIC) as reader:
            reader.wait_for(count=len(rows), timeout=30)
            records = reader.drain(quiet=1.0)
        assert {(r.header("event_id") or b"").decode() for r in records} == {row.event_id for row in rows}
        assert_in_id_order(records, rows)
        changes = [r.mode for r in caplog.records  # type: ignore[attr-defined]
                   if r.getMessage() == "relay wake-up mode changed"]
        assert changes[:2] == ["polling", "binlog"], changes
    finally:
        user.drop()


def test_a_relay_that_loses_its_lease_mid_batch_marks_nothing_twice(
    engine: Engine, private_kafka_broker: TansuBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader has a batch produced and unconfirmed (the broker is frozen) when another relay takes
    the lease. It must notice while it waits, drop the batch unmarked, and stand by; the new leader
    sends everything. Each row is marked once; a duplicate on the topic carries the same event id."""
    caplog.set_level(logging.INFO, logger="payment_service")
    broker = private_kafka_broker
    assert broker.proc is not None
    settings = relay_settings(engine, broker.bootstrap)
    users = [f"u_{i}" for i in range(5)]
    # A 5 s lease: on a loaded machine a 2 s one can change hands on its own, which is not this test.
    first = make_relay(engine, settings, holder="relay-1", lease_ttl=5.0, delivery_timeout=30.0, batch_size=100)
    second = make_relay(engine, settings, holder="relay-2", lease_ttl=5.0, delivery_timeout=30.0, batch_size=100)
    frozen = False
    try:
        with running(first):
            write(engine, *(captured(users[i % 5]) for i in range(50)))
            wait_until(lambda: unpublished(engine) == 0, 30, "the first rows published by relay-1")
            broker.proc.send_signal(signal.SIGSTOP)  # the broker takes requests and answers none
            frozen = True
            write(engine, *(captured(users[i % 5]) for i in range(150)))
            wait_until(lambda: first.publisher.queued > 0, 10, "relay-1 to produce a batch")
            # relay-1 is waiting for the broker's answer: someone else takes the lease (as after relay-1
            # stalled past its lease).
            with engine.begin() as conn:
                conn.execute(
                    update(RelayLeaseRow)
                    .where(RelayLeaseRow.name == LEASE_NAME)
                    .values(holder="relay-2", fencing=RelayLeaseRow.fencing + 1,
                            expires_at=datetime.now(UTC) + timedelta(seconds=60))
                )
            wait_until(lambda: not first.is_leader, 10, "relay-1 to notice it lost the lease mid-batch")
            marked_by_first = first.published_count
            with running(second):
                broker.proc.send_signal(signal.SIGCONT)
                frozen = False
                wait_until(lambda: unpublished(engine) == 0, 60, "relay-2 to publish everything")
                assert not first.is_leader and second.is_leader
    finally:
        if frozen:
            broker.proc.send_signal(signal.SIGCONT)
    rows = outbox_rows(engine)
    assert marked_by_first == 50 and first.published_count == 50  # nothing of the lost batch
    assert first.published_count + second.published_count == len(rows) == 200  # each row marked once
    assert "relay lost the lease" in [r.getMessage() for r in caplog.records if getattr(r, "holder", "") == "relay-1"]
    with TopicReader(broker.bootstrap, settings.EVENTS_TOPIC) as reader:
        reader.wait_for(count=len(rows), timeout=30)
        records = reader.drain(quiet=1.5)
    by_id: dict[str, set[bytes | None]] = {}
    for r in records:
        by_id.setdefault((r.header("event_id") or b"").decode(), set()).add(r.value)
    assert set(by_id) == {row.event_id for row in rows}  # nothing lost
    assert all(len(values) == 1 for values in by_id.values())  # a duplicate is the same message
    assert_in_id_order(records, rows)
    with engine.connect() as conn:
        fencing = conn.execute(select(RelayLeaseRow.fencing).where(RelayLeaseRow.name == LEASE_NAME)).scalar_one()
    assert second.fencing == fencing == 2
    print(f"duplicates on the topic: {len(records) - len(rows)}")



def binlog_dump_connections(engine: Engine) -> int:
    """This user's replication streams (the watcher's) open on the server."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE command LIKE 'Binlog Dump%'"
            " AND user = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")).scalar_one())


def test_a_busy_relay_stops_reading_the_binlog_and_follows_it_again_when_idle(
    engine: Engine, kafka_bootstrap: str
) -> None:
    """While rows keep coming the relay needs no wake-up: it drops the binlog stream (parsing every
    commit's events would only compete with it for the process) and polls. Once idle it follows the
    log again, so a lone commit later is published at once, with no poll to explain it."""
    settings = relay_settings(engine, kafka_bootstrap)
    relay = make_relay(engine, settings, idle_poll=5.0, binlog_safety_poll=60.0)
    relay.waker.busy_rate = 50.0  # what one writing thread here sustains (the default: 500 rows/s)
    stop_writing = threading.Event()
    written: list[int] = []

    def keep_writing() -> None:
        while not stop_writing.is_set():
            write(engine, captured(f"u_busy_{len(written) % 7}"))
            written.append(1)
            time.sleep(0.002)

    with running(relay):
        wait_until(lambda: relay.waker.announced, 15, "the relay to choose its wake-up mode")
        assert relay.waker.listening and binlog_dump_connections(engine) == 1
        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            wait_until(lambda: relay.waker.pauses >= 1, 15, "the busy relay to pause the binlog watcher")
            wait_until(lambda: binlog_dump_connections(engine) == 0, 5, "the binlog stream to be dropped")
            assert relay.waker.mode == "binlog"  # still the mode: the log is there, only not read while busy
            time.sleep(0.5)
        finally:
            stop_writing.set()
            writer.join(10)
        wait_until(lambda: unpublished(engine) == 0, 30, "every row of the busy spell published")
        wait_until(lambda: relay.waker.listening and binlog_dump_connections(engine) == 1, 10,
                   "the idle relay to follow the binlog again")
        time.sleep(0.5)
        started = time.monotonic()
        write(engine, captured("u_busy_after"))
        wait_until(lambda: unpublished(engine) == 0, 5, "the lone row published")
        took = time.monotonic() - started
    assert took < 3.0, f"published {took:.2f} s after the commit: not woken by the binlog"
    rows = outbox_rows(engine)
    assert relay.published_count == len(rows) == len(written) + 1
    with TopicReader(kafka_bootstrap, settings.EVENTS_TOPIC) as reader:
        reader.wait_for(count=len(rows), timeout=30)
        records = reader.drain(quiet=1.5)
    assert {(r.header("event_id") or b"").decode() for r in records} >= {row.event_id for row in rows}
    assert_in_id_order(records, rows)
