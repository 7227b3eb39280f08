"""The real parts behave as the service relies on: MariaDB transactions and SKIP LOCKED, Kafka produce/consume."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy.engine import Engine

from localparts.broker import TansuBroker, create_topic
from localparts.topic_reader import TopicReader

pytestmark = pytest.mark.integration


# --- MariaDB ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(fresh_database_url: str) -> Iterator[Engine]:
    eng = sa.create_engine(fresh_database_url, pool_pre_ping=True)
    with eng.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE items (id INT PRIMARY KEY, status VARCHAR(16) NOT NULL, note VARCHAR(64)) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
        )
    yield eng
    eng.dispose()


@pytest.fixture(autouse=True)
def _empty_items(request: pytest.FixtureRequest) -> None:
    if "engine" in request.fixturenames:
        eng: Engine = request.getfixturevalue("engine")
        with eng.begin() as conn:
            conn.execute(sa.text("DELETE FROM items"))


def _ids(eng: Engine) -> list[int]:
    with eng.connect() as conn:
        return list(conn.execute(sa.text("SELECT id FROM items ORDER BY id")).scalars())


def test_committed_transaction_is_visible_to_another_connection(engine: Engine) -> None:
    with engine.connect() as writer:
        with writer.begin():
            writer.execute(sa.text("INSERT INTO items (id, status, note) VALUES (1, 'PENDING', :n)"), {"n": "café ✓"})
            # not committed yet: another connection does not see it
            assert _ids(engine) == []
        # committed
    assert _ids(engine) == [1]
    with engine.connect() as reader:
        assert reader.execute(sa.text("SELECT note FROM items WHERE id = 1")).scalar_one() == "café ✓"


def test_rolled_back_transaction_is_not_visible(engine: Engine) -> None:
    with engine.connect() as writer:
        tx = writer.begin()
        writer.execute(sa.text("INSERT INTO items (id, status) VALUES (2, 'PENDING')"))
        tx.rollback()
    assert _ids(engine) == []


def test_select_for_update_skip_locked(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items (id, status) VALUES (1, 'PENDING'), (2, 'PENDING'), (3, 'DONE')"))
    claim = sa.text("SELECT id FROM items WHERE status = 'PENDING' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
    with engine.connect() as first, engine.connect() as second:
        second.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 5"))
        second.commit()
        with first.begin():
            assert first.execute(claim).scalar_one() == 1
            with second.begin():
                # row 1 is locked by first: skipped at once, not waited for
                assert second.execute(claim).scalar_one() == 2
                second.execute(sa.text("UPDATE items SET status = 'DONE' WHERE id = 2"))
            # both rows claimed: nothing left for another worker
            with second.begin():
                assert second.execute(claim).first() is None
            first.execute(sa.text("UPDATE items SET status = 'DONE' WHERE id = 1"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM items WHERE status = 'PENDING'")).scalar_one() == 0


# --- Kafka --------------------------------------------------------------------------------


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 15000,
        }
    )


def _produce(producer: Producer, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Message:
    delivered: list[tuple[KafkaError | None, Message]] = []
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=lambda e, m: delivered.append((e, m)))
    assert producer.flush(20) == 0, "message not delivered in 20 s"
    [(err, msg)] = delivered
    assert err is None, err
    return msg


def test_message_round_trip(kafka_bootstrap: str) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, partitions=3)
    producer = _producer(kafka_bootstrap)
    key = b"user-42"
    headers = [[("event_type", b"PAYMENT_CAPTURED"), ("i", b"%d" % i)] for i in range(3)]
    sent = [_produce(producer, topic, key, f'{{"n": {i}}}'.encode(), headers[i]) for i in range(3)]
    # the same key always lands on the same partition, in order
    assert len({m.partition() for m in sent}) == 1

    with TopicReader(kafka_bootstrap, topic) as reader:
        records = reader.wait_for(lambda r: r.key == key, count=3, timeout=20)
    assert [r.json() for r in records] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [r.header("i") for r in records] == [b"0", b"1", b"2"]
    assert all(r.header("event_type") == b"PAYMENT_CAPTURED" for r in records)
    assert [r.offset for r in records] == sorted(r.offset for r in records)


def test_broker_restart_on_same_port(private_kafka_broker: TansuBroker) -> None:
    broker = private_kafka_broker
    bootstrap = broker.bootstrap
    broker.create_topic("test.restart", partitions=3)
    _produce(_producer(bootstrap), "test.restart", b"k", b"before", [("h", b"1")])

    broker.restart()
    assert broker.bootstrap == bootstrap
    # memory storage: topics are gone after a restart, create it again
    broker.create_topic("test.restart", partitions=3)
    # a NEW idempotent producer (see docs/testing.md: a producer that lived through the restart is stuck)
    _produce(_producer(bootstrap), "test.restart", b"k", b"after", [("h", b"2")])
    with TopicReader(bootstrap, "test.restart") as reader:
        [record] = reader.wait_for(count=1, timeout=20)
    assert record.value == b"after"
    assert record.header("h") == b"2"


def test_broker_kill_and_start_again(private_kafka_broker: TansuBroker) -> None:
    broker = private_kafka_broker
    port = broker.port
    broker.kill()
    assert not broker.running
    broker.start()
    assert broker.port == port and broker.running
    broker.create_topic("test.kill", partitions=1)
    _produce(_producer(broker.bootstrap), "test.kill", b"k", b"v", [])
