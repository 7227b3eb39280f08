"""The relay's SQL on MariaDB (adapters/outbox_store.py): claim, mark once, quarantine, the leader lease on the
database's clock, purge, stats, and a connection that died being replaced."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert, select, text, update

from payment_service.adapters.orm import OutboxEventRow, RelayLeaseRow
from payment_service.adapters.outbox_store import (
    BackgroundMarker,
    LeaderLease,
    SqlOutboxStore,
    outbox_stats,
    purge_published,
)
from tests.integration.adapters.records import race

pytestmark = pytest.mark.usefixtures("empty_queues")


@pytest.fixture
def store(engine: Engine) -> Iterator[SqlOutboxStore]:
    s = SqlOutboxStore(engine, lease_name=f"test-{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def write_events(engine: Engine, n: int, *, created_at: datetime | None = None) -> list[int]:
    t = created_at or datetime.now(UTC)
    event_ids = [f"evt_{uuid.uuid4().hex}" for _ in range(n)]
    with engine.begin() as conn:
        conn.execute(insert(OutboxEventRow), [
            {"event_id": e, "event_type": "PAYMENT_CAPTURED", "subject": "pay_1", "user_id": "u_1",
             "payload": json.dumps({"id": e}), "created_at": t} for e in event_ids])
        return list(conn.execute(select(OutboxEventRow.id).where(OutboxEventRow.event_id.in_(event_ids))
                                 .order_by(OutboxEventRow.id)).scalars())


def published_ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(OutboxEventRow.id).where(OutboxEventRow.published_at.is_not(None))).scalars())


def test_claim_in_id_order_after_a_point_and_around_rows_being_marked(engine: Engine, store: SqlOutboxStore) -> None:
    ids = write_events(engine, 10)
    rows = store.claim(limit=4)
    assert [r.id for r in rows] == ids[:4]
    assert (rows[0].event_type, rows[0].user_id, json.loads(rows[0].payload)["id"]) == (
        "PAYMENT_CAPTURED", "u_1", rows[0].event_id)
    assert [r.id for r in store.claim(limit=3, after=ids[3])] == ids[4:7]
    skip = sorted([*ids[:4], ids[5]])
    assert [r.id for r in store.claim(limit=10, skip=skip)] == [ids[4], *ids[6:]]


def test_rows_are_marked_published_once(engine: Engine, store: SqlOutboxStore) -> None:
    ids = write_events(engine, 6)
    chosen = [ids[0], ids[1], ids[2], ids[4]]  # a run and a single id
    assert store.mark_published(chosen) == 4
    assert store.mark_published(chosen) == 0  # a second relay marking the same rows counts nothing
    assert store.mark_published([]) == 0
    assert published_ids(engine) == set(chosen)
    assert [r.id for r in store.claim(limit=10)] == [ids[3], ids[5]]


def test_a_quarantined_row_is_never_claimed_and_keeps_only_the_reason(engine: Engine, store: SqlOutboxStore) -> None:
    ids = write_events(engine, 3)
    bad = store.claim(limit=3)[1]
    store.quarantine([(bad, "card number in payload field data.failure_message")])
    assert [r.id for r in store.claim(limit=10)] == [ids[0], ids[2]]
    with engine.connect() as conn:
        row = conn.execute(select(OutboxEventRow).where(OutboxEventRow.id == bad.id)).one()
    assert row.quarantined_at is not None and row.published_at is None
    assert row.last_error == "card number in payload field data.failure_message"
    assert outbox_stats(engine)[0] == 2  # not waiting any more


def test_the_background_marker_marks_what_it_is_given(engine: Engine, store: SqlOutboxStore) -> None:
    ids = write_events(engine, 5)
    marked: list[int] = []
    marker = BackgroundMarker(store, marked.append)
    marker.submit(ids[:2])
    marker.submit(ids[2:])
    marker.close()
    assert sum(marked) == 5 and marker.pending_ids() == []
    assert published_ids(engine) == set(ids)


def test_the_marker_marks_what_came_during_a_mark_in_one_statement_and_holds_back_only_past_its_limit(
        engine: Engine, store: SqlOutboxStore) -> None:
    ids = write_events(engine, 7)
    calls: list[list[int]] = []
    first_running, release = threading.Event(), threading.Event()
    real_mark = store.mark_published

    def slow_first_mark(batch: list[int]) -> int:
        calls.append(list(batch))
        if len(calls) == 1:
            first_running.set()
            release.wait(10)
        return real_mark(batch)

    store.mark_published = slow_first_mark  # type: ignore[method-assign]
    marked: list[int] = []
    marker = BackgroundMarker(store, marked.append, max_pending_rows=5)
    marker.submit(ids[:1])
    assert first_running.wait(10)
    for part in (ids[1:3], ids[3:5]):  # while the first mark runs: the relay is not held up
        marker.submit(part)
    assert marker.pending_ids() == ids[:5]
    blocked = threading.Thread(target=marker.submit, args=(ids[5:7],))  # 5 rows wait: the limit
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()
    release.set()
    blocked.join(10)
    marker.close()
    assert calls[0] == ids[:1] and calls[1] == ids[1:5]  # the two batches that came meanwhile: one UPDATE
    assert sorted(i for c in calls for i in c) == ids and len(calls) <= 3
    assert sum(marked) == 7 and published_ids(engine) == set(ids)


def test_one_lease_holder_at_a_time_and_fencing_counts_the_changes(engine: Engine, store: SqlOutboxStore) -> None:
    first, second = LeaderLease(store, "relay-1", ttl=30.0), LeaderLease(store, "relay-2", ttl=30.0)
    assert first.renew() and first.fencing == 1
    assert not second.renew() and not second.held
    assert first.renew() and first.fencing == 1  # renewing is not a change of holder
    store.release_lease("relay-1")
    assert second.renew() and second.fencing == 2
    with engine.begin() as conn:  # relay-2's lease runs out, by the database's clock
        conn.execute(update(RelayLeaseRow).where(RelayLeaseRow.name == store.lease_name)
                     .values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    first.held = False
    assert first.renew() and first.fencing == 3
    assert not second.renew()


def test_the_lease_is_timed_by_the_database_clock(engine: Engine, store: SqlOutboxStore) -> None:
    def db_now() -> datetime:
        with engine.connect() as conn:
            return conn.execute(text("SELECT UTC_TIMESTAMP(6)")).scalar_one().replace(tzinfo=UTC)

    before = db_now()
    assert store.take_or_renew_lease("relay-1", ttl=5.0)
    after = db_now()
    with engine.connect() as conn:
        expires = conn.execute(select(RelayLeaseRow.expires_at).where(RelayLeaseRow.name == store.lease_name)
                               ).scalar_one()
    assert before <= expires - timedelta(seconds=5) <= after


def test_relays_racing_for_the_lease_elect_one(engine: Engine) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    stores = [SqlOutboxStore(engine, lease_name=name) for _ in range(6)]
    try:
        results = race(lambda i: stores[i].take_or_renew_lease(f"relay-{i}", ttl=30.0), len(stores))
        assert results.count(True) == 1, results
        assert stores[0].fencing() == 1
    finally:
        for s in stores:
            s.close()


def test_a_connection_that_died_is_replaced_on_the_next_call(engine: Engine, store: SqlOutboxStore) -> None:
    ids = write_events(engine, 2)
    assert len(store.claim(limit=10)) == 2
    conn_id = store._local.conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
    with engine.connect() as admin:
        admin.exec_driver_sql(f"KILL CONNECTION {int(conn_id)}")
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for a lost connection
        store.claim(limit=10)
    assert [r.id for r in store.claim(limit=10)] == ids  # a new connection, no restart


def test_purge_deletes_only_old_published_rows_in_batches(engine: Engine, store: SqlOutboxStore) -> None:
    old, recent, waiting = write_events(engine, 5), write_events(engine, 2), write_events(engine, 1)
    long_ago = datetime.now(UTC) - timedelta(days=10)
    with engine.begin() as conn:
        conn.execute(update(OutboxEventRow).where(OutboxEventRow.id.in_(old)).values(published_at=long_ago))
    store.mark_published(recent)
    assert purge_published(engine, timedelta(days=7), batch_size=2) == 5
    with engine.connect() as conn:
        left = set(conn.execute(select(OutboxEventRow.id)).scalars())
    assert left == {*recent, *waiting}


def test_stats_count_the_waiting_rows_and_age_the_oldest(engine: Engine, store: SqlOutboxStore) -> None:
    assert outbox_stats(engine) == (0, 0.0)
    write_events(engine, 3, created_at=datetime.now(UTC) - timedelta(seconds=90))
    ids = write_events(engine, 2)
    store.mark_published(ids)
    backlog, age = outbox_stats(engine)
    assert backlog == 3 and 89 <= age < 600


def test_marking_the_newest_rows_does_not_hold_up_a_transaction_writing_an_event(
        engine: Engine, store: SqlOutboxStore) -> None:
    """Every API and worker transaction that changes money inserts an outbox row. The relay's mark is an
    UPDATE over a run of ids up to the newest; at REPEATABLE READ it would lock the gap after that id, and
    every such INSERT would wait for it. The store's connections, AUTOCOMMIT, keep the engine's READ
    COMMITTED, which locks only the rows marked."""
    ids = write_events(engine, 4)
    # The store's own connection for this thread, its statements held open in a transaction so that its
    # locks stay held while another connection writes an event.
    with store._connection() as conn:
        conn.exec_driver_sql("BEGIN")
        try:
            assert store.mark_published(ids) == 4
            outcome: list[str] = []

            def write_one() -> None:
                with engine.connect() as other:
                    other.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 2")
                    try:
                        other.execute(insert(OutboxEventRow), {
                            "event_id": f"evt_{uuid.uuid4().hex}", "event_type": "PAYMENT_CAPTURED",
                            "subject": "pay_2", "user_id": "u_2", "payload": "{}", "created_at": datetime.now(UTC)})
                        other.commit()
                        outcome.append("written")
                    except Exception as exc:  # noqa: BLE001 - the lock wait timeout is the failure shown
                        outcome.append(f"{type(exc).__name__}: {exc}")

            writer = threading.Thread(target=write_one)
            writer.start()
            writer.join(10)
            assert outcome == ["written"]
        finally:
            conn.exec_driver_sql("ROLLBACK")
