"""The complete consumer of docs/consuming-events.md, run as written, on the relay's messages in the broker.

The python block is taken from the page itself, so the page cannot drift from what works: it joins a
consumer group (Tansu assigns partitions after ~20 s), credits and debits balances in SQLite, applies a
redelivered message once, sets a forged one aside on the dead-letter topic, and commits every offset.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy import Engine, update

from localparts.topic_reader import TopicReader
from payment_service.adapters.orm import OutboxEventRow
from tests.integration.relay.support import (
    NEW,
    fresh,
    not_published,
    relay_running,
    settings_for,
    write,
)
from tests.support.event_contract import domain_events
from tests.support.waiting import wait_for as wait_until

DOC = Path(__file__).resolve().parents[3] / "docs" / "consuming-events.md"


def doc_consumer() -> dict[str, Any]:
    """The namespace of the page's complete consumer (its `if __name__ == "__main__"` part not run)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (source,) = [b for b in blocks if b.startswith('"""wallet_consumer.py')]
    namespace: dict[str, Any] = {"__name__": "wallet_consumer"}
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def test_the_documented_consumer_works(engine: Engine, kafka_bootstrap: str, tmp_path: Path) -> None:
    wallet = doc_consumer()
    topic = f"payment.events.wallet.{uuid.uuid4().hex[:8]}"
    dead_letter_topic = f"wallet.dead-letters.{uuid.uuid4().hex[:8]}"
    events = [fresh(e, "u_wallet_1") for e in domain_events()] + [fresh(e, "u_wallet_2") for e in domain_events()[:2]]
    write(engine, *events)
    with relay_running(engine, settings_for(engine, kafka_bootstrap, topic, NEW)):
        wait_until(lambda: not_published(engine) == 0, 30, "the events published")
        with engine.begin() as conn:  # a relay that died before marking this row sends it again
            conn.execute(update(OutboxEventRow).where(OutboxEventRow.event_id == events[0].id)
                         .values(published_at=None))
        wait_until(lambda: not_published(engine) == 0, 30, "the redelivery published")
    # A forged capture: someone else's key under our key id.
    forged = fresh(domain_events()[0], "u_wallet_2")
    from payment_service.adapters.outbox import serialize_event

    value = serialize_event(forged).encode()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"u_wallet_2", value=value, headers=[
        ("event_id", forged.id.encode()), ("event_type", b"PAYMENT_CAPTURED"),
        ("signature", hmac.new(b"forger", value, hashlib.sha256).hexdigest().encode()),
        ("signature_key_id", NEW[0].encode()), ("content-type", b"application/cloudevents+json")])
    assert producer.flush(10) == 0
    with TopicReader(kafka_bootstrap, topic) as reader:
        on_topic = reader.wait_for(count=len(events) + 2, timeout=30)

    expected: dict[tuple[str, str], int] = {}
    for e in events:
        sign = wallet["EFFECT"].get(e.type.value)
        if sign:
            key = (e.user_id, e.data["currency"])
            expected[key] = expected.get(key, 0) + sign * e.data["amount"]

    db_path = tmp_path / "wallet.sqlite3"
    stop = threading.Event()
    group = f"wallet-{uuid.uuid4().hex[:8]}"
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            wallet["run"](
                kafka={"bootstrap.servers": kafka_bootstrap, "group.id": group}, topic=topic,
                keys={NEW[0]: NEW[1].encode()}, db=sqlite3.connect(db_path), stopping=stop.is_set,
                dead_letter_topic=dead_letter_topic,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    def balances() -> dict[tuple[str, str], int]:
        if not db_path.exists():
            return {}
        with sqlite3.connect(db_path) as db:
            try:
                return {(u, c): a for u, c, a in db.execute("SELECT user_id, currency, amount FROM balances")}
            except sqlite3.OperationalError:  # not created yet
                return {}

    ends = {(r.partition): 0 for r in on_topic}
    for r in on_topic:
        ends[r.partition] = max(ends[r.partition], r.offset + 1)

    def committed() -> dict[int, int]:
        probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            offsets = probe.committed([TopicPartition(topic, p) for p in ends], timeout=10)
            return {tp.partition: tp.offset for tp in offsets}
        finally:
            probe.close()

    thread = threading.Thread(target=consume, name="doc-wallet-consumer", daemon=True)
    thread.start()
    try:
        wait_until(lambda: failure or committed() == ends, 90, "the documented consumer to commit every message",
                   interval=0.5)
    finally:
        stop.set()
        thread.join(30)
    assert not failure, failure
    assert not thread.is_alive()
    assert balances() == expected  # the redelivered capture counted once, the forged one not at all
    with sqlite3.connect(db_path) as db:
        processed = {row[0] for row in db.execute("SELECT event_id FROM processed_events")}
    assert processed == {e.id for e in events}
    with TopicReader(kafka_bootstrap, dead_letter_topic) as dead:
        (set_aside,) = dead.wait_for(count=1, timeout=30)
    assert set_aside.header("event_id") == forged.id.encode()
