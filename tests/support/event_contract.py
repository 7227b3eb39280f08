"""Every event the suite publishes is checked against the AsyncAPI document (payment_service/events/asyncapi.json).

Two nets, installed by tests/conftest.py (this module is a pytest plugin there):

- `check_event_record`: a `TopicReader.record_checks` hook. Every record a test reads from an events topic
  (`payment.events`, or `payment.events.<anything>` as the tests name theirs) is checked as it is read; a
  mismatch raises ContractViolation (an AssertionError) in that test.
- `check_event_topics`: at the end of the session, every events topic of the session broker is read to its
  end and each message checked, so events no test happened to read are covered too.

`stats` counts what was checked, so a test can prove the nets ran; the run's summary prints it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from localparts.topic_reader import Record, TopicReader
from payment_service.adapters.outbox import serialize_event
from payment_service.domain import lifecycle
from payment_service.domain.events import Event
from payment_service.domain.payments import Payment, Refund
from payment_service.domain.withdrawals import Withdrawal
from payment_service.events.contract import ContractViolation, EventContract

EVENTS_TOPIC = "payment.events"
_SHOWN = 20  # problems listed in one failure
AT = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)


@dataclass
class Stats:
    records_checked: int = 0  # by the TopicReader hook
    swept: int = 0  # by the end-of-session sweep


stats = Stats()


@cache
def contract() -> EventContract:
    return EventContract()


def is_events_topic(topic: str) -> bool:
    return topic == EVENTS_TOPIC or topic.startswith(EVENTS_TOPIC + ".")


def _where(topic: str, partition: int, offset: int) -> str:
    return f"{topic}[{partition}]@{offset}"


def check_event_record(record: Record) -> None:
    """The TopicReader hook: raise ContractViolation for a record of an events topic that does not match."""
    if not is_events_topic(record.topic):
        return
    stats.records_checked += 1
    problems = contract().problems(record.key, record.headers, record.value)
    if problems:
        raise ContractViolation(
            f"{_where(record.topic, record.partition, record.offset)} does not match the AsyncAPI document "
            "(payment_service/events/asyncapi.json):\n  " + "\n  ".join(problems)
        )


def pytest_configure(config: Any) -> None:
    if check_event_record not in TopicReader.record_checks:
        TopicReader.record_checks.append(check_event_record)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many events were checked, so a run shows the nets were there (this module is a plugin)."""
    if stats.records_checked or stats.swept:
        terminalreporter.write_line(
            f"AsyncAPI contract: {stats.records_checked} event records checked as tests read them, "
            f"{stats.swept} swept from the session broker's events topics"
        )


def check_event_topics(bootstrap: str, timeout: float = 30.0) -> int:
    """Read every events topic on the broker to its end and check each message; returns how many were
    checked. Raises ContractViolation listing the first mismatches."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"contract-sweep-{uuid.uuid4().hex}",  # required by librdkafka; never joined
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    checked, problems = 0, []
    try:
        # All topics, never one by name: Tansu auto-creates a topic it is asked about.
        topics = consumer.list_topics(timeout=10).topics
        ends: dict[tuple[str, int], int] = {}
        for name, info in topics.items():
            if not is_events_topic(name) or info.error is not None:
                continue
            for p in info.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high > low:
                    ends[(name, p)] = high
        if not ends:
            return 0
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise AssertionError(f"contract sweep: could not read to the end of {sorted(ends)} in {timeout}s")
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
                checked += 1
                found = contract().problems(msg.key(), msg.headers() or [], msg.value())
                if found:
                    problems.append(f"{_where(topic, partition, offset)}: " + "; ".join(found))
                if offset + 1 >= ends.get((topic, partition), 0):
                    ends.pop((topic, partition), None)
    finally:
        consumer.close()
    stats.swept += checked
    if problems:
        listing = "\n  ".join(problems[:_SHOWN])
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise ContractViolation(
            f"{len(problems)} of {checked} messages on the broker's events topics do not match the AsyncAPI "
            f"document (payment_service/events/asyncapi.json):\n  {listing}{more}"
        )
    return checked


# --- events as the domain builds them, for the contract's tests -------------------------------


def sample_payment(**kw: Any) -> Payment:
    """A captured payment, with `kw` changed."""
    fields: dict[str, Any] = dict(
        id="pay_01jd3x8q2f7m4k9v0c5h6n2r8t", user_id="u_1", amount=50000, currency="INR", gateway="stripe",
        status="CAPTURED", created_at=AT, updated_at=AT, gateway_payment_id="pi_3QhZ2a", captured_at=AT,
    )
    return Payment(**{**fields, **kw})


def sample_withdrawal(status: str, **kw: Any) -> Withdrawal:
    """An IMPS withdrawal in `status`, with `kw` changed."""
    fields: dict[str, Any] = dict(
        id="wd_01jd3z1c2d3e4f5g6h7j8k9m0n", user_id="u_1", amount=100000, currency="INR", mode="IMPS",
        status=status, beneficiary_name="A Kumar", created_at=AT, updated_at=AT, account_last4="7890",
        ifsc="HDFC0000123", gateway_payout_id="pout_1", utr="412345678901",
    )
    return Withdrawal(**{**fields, **kw})


def domain_events() -> list[Event]:
    """One event of each type, and the variants of their data, as the lifecycle builds them."""
    refund = Refund(id="re_01jd3y0a1b2c3d4e5f6g7h8j9k", payment_id="pay_01jd3x8q2f7m4k9v0c5h6n2r8t", user_id="u_1",
                    amount=1000, currency="INR", status="SUCCEEDED", created_at=AT, updated_at=AT,
                    reason="requested_by_customer", gateway_refund_id="re_3QhZ3b")
    bare_refund = Refund(**{**refund.__dict__, "reason": None, "gateway_refund_id": None})
    refunds = [lifecycle.refunded_event(r, AT, sample_payment()) for r in (refund, bare_refund)]
    events = [
        lifecycle.payment_captured_event(sample_payment(), AT),
        lifecycle.payment_captured_event(sample_payment(gateway="razorpay", currency="JPY", amount=5000), AT),
        lifecycle.payment_failed_event(sample_payment(status="FAILED", failure_code="card_declined",
                                                      failure_message="Your card was declined.", captured_at=None)),
        # Refused by the fraud pre-check: the gateway was never called.
        lifecycle.payment_failed_event(sample_payment(status="FAILED", gateway_payment_id=None, captured_at=None,
                                                      failure_code="fraud_suspected")),
        lifecycle.payment_expired_event(sample_payment(status="EXPIRED", captured_at=None), AT),
        *(e for e in refunds if e is not None),
        lifecycle.withdrawal_event(sample_withdrawal("SETTLED"), AT),
        lifecycle.withdrawal_event(sample_withdrawal("FAILED", utr=None, failure_reason="bank offline"), AT),
        lifecycle.withdrawal_event(sample_withdrawal("REVERSED", mode="UPI", vpa="akumar@okbank",
                                                     account_last4=None, ifsc=None), AT),
    ]
    assert len(events) == 10
    return events


def as_message(event: Event, data: dict[str, Any] | None = None) -> tuple[bytes, list[tuple[str, bytes]], bytes]:
    """(key, headers, value) as the relay sends this event (with `data` instead of its own, if given)."""
    if data is not None:
        event = Event(event.type, event.subject, event.user_id, data, id=event.id, time=event.time)
    value = serialize_event(event).encode()
    headers = [("event_id", event.id.encode()), ("event_type", event.type.value.encode()),
               ("signature", hmac.new(b"k", value, hashlib.sha256).hexdigest().encode()),
               ("signature_key_id", b"test-1"), ("content-type", b"application/cloudevents+json")]
    return event.user_id.encode(), headers, value
