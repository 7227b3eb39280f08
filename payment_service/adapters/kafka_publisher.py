"""Outbox rows to Kafka: the idempotent producer, the topic, the signed message, the delivery reports.

The relay hands a batch of claimed rows to `send()`, which produces them in id order and does not wait;
`wait()` collects the broker's answers; `confirmed_run()` says which rows may be marked published:
the run, in id order, that the broker confirmed, up to the first it did not.

librdkafka never times a message out here (`message.timeout.ms=0`). An idempotent producer *does* skip
messages that time out and goes on with later ones (it bumps its epoch), which would put a user's later
event before an earlier one. Instead, when the relay stops waiting it purges and drops the producer
(`close(purge=True)`) and sends again from the first unconfirmed row with a new one. Within one producer
the broker appends a partition's messages strictly in sequence, so what it holds is always a prefix of
what was sent. See docs/events.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from .outbox_store import OutboxMessage

logger = logging.getLogger(__name__)

CONTENT_TYPE = b"application/cloudevents+json"
PENDING = object()  # no delivery report yet
NOT_SENT = object()  # not produced: a row before it could not be
# Broker answers about one message that no retry changes.
_REFUSED_FOR_GOOD = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG, KafkaError.INVALID_RECORD}
)


def sign(value: bytes, key: bytes | str) -> str:
    """The `signature` header: hex HMAC-SHA256 of the message value."""
    raw_key = key.encode() if isinstance(key, str) else key
    return hmac.new(raw_key, value, hashlib.sha256).hexdigest()


def verify_signature(value: bytes, signature: bytes | str, key: bytes | str) -> bool:
    """What a consumer does with the `signature` header (constant-time comparison)."""
    given = signature.decode() if isinstance(signature, bytes) else signature
    return hmac.compare_digest(sign(value, key), given)


@dataclass(frozen=True)
class Delivered:
    """One row the broker confirmed, for the relay's optional `on_delivered` hook (benchmarks, tests)."""

    id: int
    event_id: str
    acked_at: float  # time.time() when the delivery report arrived


@dataclass
class Sent:
    """A produced batch waiting for its delivery reports."""

    rows: list[OutboxMessage]
    results: list[object]  # per row: PENDING, NOT_SENT, None (confirmed, or set aside) or the error
    acked_at: list[float]  # 0.0 for a row set aside while producing: never marked published
    set_aside: list[tuple[OutboxMessage, str]] = field(default_factory=list)
    produced: int = 0
    complete: bool = True  # every row was handed to the producer

    def report(self, i: int, err: KafkaError | None, _msg: Any) -> None:
        self.results[i] = err
        self.acked_at[i] = time.time()

    def pending(self) -> bool:
        return PENDING in self.results

    def confirmed_run(self) -> tuple[int, list[int]]:
        """(length of the confirmed run from the first row, indices in it to mark: not those set aside)."""
        results, n = self.results, len(self.rows)
        confirmed = 0
        while confirmed < n and results[confirmed] is None:
            confirmed += 1
        acked_at = self.acked_at
        return confirmed, [i for i in range(confirmed) if acked_at[i]]

    def first_error(self, confirmed: int) -> object:
        return self.results[confirmed] if confirmed < len(self.rows) else None


def refused_for_good(err: object) -> bool:
    return isinstance(err, KafkaError) and err.code() in _REFUSED_FOR_GOOD


def describe(err: object) -> str | None:
    if err is None:
        return None
    if err is PENDING:
        return "no delivery report"
    if err is NOT_SENT:
        return "not sent"
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return f"{type(err).__name__}: {err}"


class _LibrdkafkaLog:
    """librdkafka's own log lines, at most WARNING: it reports every refused reconnect as an error,
    while whether an outage matters is the relay's call (it logs its own warnings and errors)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(__name__ + ".librdkafka")

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._logger.log(min(level, logging.WARNING), msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()


class KafkaPublisher:
    """The relay's producer and topic. Not thread-safe: the relay's loop is its only caller."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        partitions: int,
        signing_key: str,
        signing_key_id: str,
        producer_config: dict[str, Any] | None = None,
        delivery_timeout: float = 5.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.delivery_timeout = delivery_timeout
        self._signing_key = signing_key.encode()
        self._signing_key_id = signing_key_id.encode()
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": "payment-service-relay",
            "enable.idempotence": True,
            "acks": "all",
            # Measured on Tansu (bench/relay.py): 5 ms fills larger requests when a backlog drains
            # and still keeps commit-to-ack p99 in the tens of milliseconds at 1000 events/s.
            "linger.ms": 5,
            "message.timeout.ms": 0,  # never skip a message: see the module's docstring
            # The Java client's partitioner: the same user_id lands on the same partition whoever produces.
            "partitioner": "murmur2_random",
            # Connect to the brokers at once: with sparse connections a new idempotent producer got its
            # producer id (and sent its first message) about a second after it was built, 50 ms without.
            "enable.sparse.connections": False,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 1000,
            "logger": _LIBRDKAFKA_LOG,
            "error_cb": self._on_client_error,
            **(producer_config or {}),
        }
        self._producer: Producer | None = None
        self._admin: AdminClient | None = None
        self.broken = False  # a fatal producer error: the batch is not trusted, the producer rebuilt

    # -- the producer ---------------------------------------------------------------------------------

    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._config)
            self.broken = False
        return self._producer

    @property
    def queued(self) -> int:
        """Messages produced and not yet answered for (the producer's queue)."""
        return len(self._producer) if self._producer is not None else 0

    def warm(self) -> None:
        """Build the producer now: an idempotent one spends its first few hundred milliseconds getting a
        producer id, and events waiting for it would pay for that."""
        self.producer().poll(0)

    def close(self, *, purge: bool) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if purge:
            producer.purge(in_queue=True, in_flight=True, blocking=True)
            producer.flush(0)  # serve the purged messages' reports; the rows stay unpublished
        else:
            producer.flush(self.delivery_timeout)
        # Dropping the last reference destroys the client and its threads.

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.broken = True
            logger.error("producer fatal error; it will be rebuilt", extra={"error": describe(err)})
        else:
            logger.debug("kafka client error", extra={"error": describe(err)})

    # -- send and wait --------------------------------------------------------------------------------

    def send(self, rows: Sequence[OutboxMessage]) -> Sent:
        """Produce the rows in id order, signed, keyed by user_id; does not wait for the broker."""
        producer = self.producer()
        n = len(rows)
        sent = Sent(list(rows), [PENDING] * n, [0.0] * n)
        key, key_id = self._signing_key, self._signing_key_id
        for i, msg in enumerate(rows):
            try:
                value = msg.payload.encode()
            except UnicodeEncodeError:
                sent.results[i] = None  # nothing to wait for, and never marked published (no ack time)
                sent.set_aside.append((msg, "payload is not encodable as UTF-8"))
                continue
            headers = [
                ("event_id", msg.event_id.encode()),
                ("event_type", msg.event_type.encode()),
                ("signature", hmac.new(key, value, hashlib.sha256).hexdigest().encode()),
                ("signature_key_id", key_id),
                ("content-type", CONTENT_TYPE),
            ]
            if self._produce(producer, sent, i, value, headers):
                sent.produced += 1
            elif not sent.complete:
                break  # keep order: nothing after a row that could not be produced
        return sent

    def _produce(self, producer: Producer, sent: Sent, i: int, value: bytes, headers: list[Any]) -> bool:
        """Hand one row to the producer; False if it was set aside, or failed (the batch then ends there)."""
        report, msg = sent.report, sent.rows[i]
        while True:
            try:
                producer.produce(
                    self.topic, value=value, key=msg.user_id.encode(), headers=headers,
                    on_delivery=lambda err, m: report(i, err, m),
                )
                return True
            except BufferError:
                producer.poll(0.05)  # the local queue is full: serve delivery reports, then retry
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    sent.results[i] = None
                    sent.set_aside.append((msg, f"message too large for the broker ({len(value)} bytes)"))
                    return False
                sent.results[i] = err if isinstance(err, KafkaError) else exc
                sent.results[i + 1 :] = [NOT_SENT] * (len(sent.rows) - i - 1)
                sent.complete = False
                return False

    def answered(self, sent: Sent) -> bool:
        """Serve the delivery reports that arrived; True if the broker answered for every row of `sent`."""
        if self._producer is not None:
            self._producer.poll(0)
        return not sent.pending()

    def wait(self, sent: Sent, *, more_queued: bool, tick: Callable[[], bool],
             interrupt: Callable[[], bool] | None = None) -> bool:
        """Wait for the batch's delivery reports, at most `delivery_timeout`; `tick()` runs about every
        0.1 s (the relay renews its lease there) and stops the wait when it returns False. With
        `interrupt`, the wait looks every 2 ms and ends when it returns True (the relay was woken: rows
        to produce behind these); returns whether that is why it ended."""
        producer = self._producer
        deadline = time.monotonic() + self.delivery_timeout
        step = 0.1 if interrupt is None else 0.002
        while producer is not None and sent.pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if more_queued:
                producer.poll(min(step, remaining))  # the next batch is queued too: let it fill requests
            else:
                # Nothing else queued: flush, which also sends at once what linger.ms would hold back.
                producer.flush(min(step, remaining))
            if sent.pending():
                if not tick():
                    return False
                if interrupt is not None and interrupt():
                    return True
        return False

    # -- the topic ------------------------------------------------------------------------------------

    def ensure_topic(self, pause: Callable[[float], Any]) -> None:
        """Create the topic if it is missing (a restarted in-memory broker loses it). Raises if the broker is away.

        Create first, then look: asking a broker about one named topic may auto-create it with the
        broker's default partition count (Tansu does).
        """
        if self._admin is None:
            config: dict[str, Any] = {
                "bootstrap.servers": self.bootstrap, "socket.timeout.ms": 3000, "logger": _LIBRDKAFKA_LOG,
            }
            self._admin = AdminClient(config)
        admin = self._admin
        # Short timeouts: the lease is not renewed while this waits.
        futures = admin.create_topics(
            [NewTopic(self.topic, num_partitions=self.partitions, replication_factor=-1)],
            operation_timeout=2,
            request_timeout=2,
        )
        try:
            futures[self.topic].result(timeout=3)
            logger.info("created topic", extra={"topic": self.topic, "partitions": self.partitions})
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                # Not allowed to create topics, say: fine if it exists.
                if self.topic not in admin.list_topics(timeout=2).topics:
                    raise
        deadline = time.monotonic() + 5
        while True:
            info = admin.list_topics(timeout=2).topics.get(self.topic)
            if info is not None and info.error is None and info.partitions:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"topic {self.topic} not visible after creating it")
            pause(0.1)
