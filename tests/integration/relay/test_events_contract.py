"""Real messages from the relay, through the broker (Tansu), against the AsyncAPI document and the consumer helper.

Events of every type are built by the domain's own builders, written to the outbox on MariaDB as the
services write them, and published by the relay: once with the old signing key, then, after a
rotation, with the new one. The test topic reader checks each message against the AsyncAPI document
as it reads it (tests/support/event_contract.py); the consumer helper then takes the same messages:
good ones, a forged one, both keys, and a redelivery the relay really made.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Producer
from sqlalchemy import Engine, update

from localparts.broker import TansuBroker
from localparts.topic_reader import Record, TopicReader
from payment_service.adapters.orm import OutboxEventRow
from payment_service.domain.events import Event, EventType
from payment_service.events.consumer import (
    CloudEvent,
    EventConsumer,
    InMemoryProcessedEvents,
    InvalidSignature,
    Outcome,
    UnknownSigningKey,
)
from payment_service.events.contract import ContractViolation
from tests.integration.relay.support import (
    NEW,
    OLD,
    fresh,
    not_published,
    relay_running,
    settings_for,
    write,
)
from tests.support import event_contract
from tests.support.event_contract import domain_events
from tests.support.waiting import wait_for as wait_until


def event_id(r: Record) -> str:
    return (r.header("event_id") or b"").decode()


def publish_rotated(engine: Engine, bootstrap: str, topic: str) -> tuple[list[Event], list[Event]]:
    """Every type of event published with the old key, then (the key rotated) again with the new one."""
    before = [fresh(e, "u_contract_1") for e in domain_events()]
    after = [fresh(e, "u_contract_2") for e in domain_events()]
    write(engine, *before)
    with relay_running(engine, settings_for(engine, bootstrap, topic, OLD)):
        wait_until(lambda: not_published(engine) == 0, 30, "the old key's events published")
    write(engine, *after)
    with relay_running(engine, settings_for(engine, bootstrap, topic, NEW)):
        wait_until(lambda: not_published(engine) == 0, 30, "the new key's events published")
    return before, after


def test_relay_messages_match_the_document_and_the_consumer_takes_them(engine: Engine, kafka_bootstrap: str) -> None:
    topic = f"payment.events.contract.{uuid.uuid4().hex[:8]}"
    before, after = publish_rotated(engine, kafka_bootstrap, topic)
    checked_before = event_contract.stats.records_checked
    with TopicReader(kafka_bootstrap, topic) as reader:  # checks each record against the AsyncAPI document
        records = reader.wait_for(count=len(before) + len(after), timeout=30)
    assert event_contract.stats.records_checked - checked_before >= len(records)
    assert {EventType(r.header("event_type").decode()) for r in records} == set(EventType)  # type: ignore[union-attr]
    by_id = {event_id(r): r for r in records}
    assert {r.header("signature_key_id") for r in records} == {OLD[0].encode(), NEW[0].encode()}

    # A consumer holding both keys (mid-rotation) takes every message, each once.
    applied: list[CloudEvent] = []
    consumer = EventConsumer({OLD[0]: OLD[1], NEW[0]: NEW[1]}, InMemoryProcessedEvents())
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert consumer.handle(r.value, r.headers, applied.append) is Outcome.PROCESSED
    assert [e.id for e in applied if e.user_id == "u_contract_1"] == [e.id for e in before]  # one user's order
    assert {e.signature_key_id for e in applied if e.user_id == "u_contract_2"} == {NEW[0]}
    captured = next(e for e in applied if e.type == "PAYMENT_CAPTURED")
    assert captured.data == next(e.data for e in before + after if e.id == captured.id)

    # After the old key is dropped, an old message is a configuration problem, not a forgery.
    new_only = EventConsumer({NEW[0]: NEW[1]}, InMemoryProcessedEvents())
    with pytest.raises(UnknownSigningKey):
        new_only.handle(by_id[before[0].id].value, by_id[before[0].id].headers, applied.append)

    # A forged copy of a real message: the amount raised, the relay's signature kept; or re-signed with
    # a key of the forger's under a trusted key id.
    real = by_id[after[0].id]
    assert real.value is not None and b'"amount":50000' in real.value
    raised = real.value.replace(b'"amount":50000', b'"amount":5000000')
    forged_sig = hmac.new(b"forger", raised, hashlib.sha256).hexdigest().encode()
    forgers_headers = [(k, forged_sig if k == "signature" else v) for k, v in real.headers]
    fresh_consumer = EventConsumer({OLD[0]: OLD[1], NEW[0]: NEW[1]}, InMemoryProcessedEvents())
    for value, headers in ((raised, real.headers), (raised, forgers_headers)):
        with pytest.raises(InvalidSignature):
            fresh_consumer.handle(value, headers, applied.append)


def test_a_redelivery_by_the_relay_is_applied_once(engine: Engine, kafka_bootstrap: str) -> None:
    topic = f"payment.events.redelivery.{uuid.uuid4().hex[:8]}"
    event = fresh(domain_events()[0], "u_redelivery")
    write(engine, event)
    settings = settings_for(engine, kafka_bootstrap, topic, NEW)
    with relay_running(engine, settings):
        wait_until(lambda: not_published(engine) == 0, 30, "the event published")
        # What a relay that died before marking the row does: it sends the row again.
        with engine.begin() as conn:
            conn.execute(update(OutboxEventRow).values(published_at=None))
        wait_until(lambda: not_published(engine) == 0, 30, "the event published again")
    with TopicReader(kafka_bootstrap, topic) as reader:
        copies = reader.wait_for(lambda r: event_id(r) == event.id, count=2, timeout=30)
    assert copies[0].value == copies[1].value and copies[0].offset != copies[1].offset

    credited: list[CloudEvent] = []
    consumer = EventConsumer({NEW[0]: NEW[1]}, InMemoryProcessedEvents())
    outcomes = [consumer.handle(r.value, r.headers, credited.append) for r in copies]
    assert outcomes == [Outcome.PROCESSED, Outcome.DUPLICATE]
    assert [e.id for e in credited] == [event.id]


def _produce(bootstrap: str, topic: str, event: Event, data: dict[str, Any]) -> None:
    """A message exactly as the relay would send `event` with `data` (bypassing the outbox)."""
    from payment_service.adapters.outbox import serialize_event

    value = serialize_event(replace(event, data=data)).encode()
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=event.user_id.encode(), value=value, headers=[
        ("event_id", event.id.encode()), ("event_type", event.type.value.encode()),
        ("signature", hmac.new(b"k", value, hashlib.sha256).hexdigest().encode()), ("signature_key_id", b"k1"),
        ("content-type", b"application/cloudevents+json")])
    assert producer.flush(10) == 0


def test_the_contract_check_catches_a_wrong_event_on_the_topic(private_kafka_broker: TansuBroker) -> None:
    """Proof that the nets are there: an event missing a field fails the reading test and the session sweep.
    (On a private broker: the session broker's sweep must stay green.)"""
    bootstrap = private_kafka_broker.bootstrap
    topic = "payment.events.proof"
    good = fresh(domain_events()[0], "u_proof")
    _produce(bootstrap, topic, good, dict(good.data))
    wait_until(lambda: event_contract.check_event_topics(bootstrap) == 1, 30, "the good event on the topic")

    bad = fresh(domain_events()[0], "u_proof")
    _produce(bootstrap, topic, bad, {k: v for k, v in bad.data.items() if k != "captured_at"})
    with TopicReader(bootstrap, topic) as reader:
        with pytest.raises(ContractViolation, match="'captured_at' is a required property"):
            reader.wait_for(count=2, timeout=30)
    with pytest.raises(ContractViolation, match=r"(?s)1 of 2 messages .*'captured_at' is a required property"):
        event_contract.check_event_topics(bootstrap)
