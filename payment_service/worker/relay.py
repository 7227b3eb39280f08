"""The outbox relay: publishes `outbox_events` rows to Kafka in id order, from one elected leader.

Every relay process runs the same loop. Only the holder of the lease row `relay_leases('outbox')`
publishes; the others stand by and take over within a few seconds of the leader's last renewal.

One round of the leader:

1. renew the lease (by the database's clock, so relays on different hosts need not agree on time);
2. claim the oldest unpublished rows (`published_at IS NULL AND quarantined_at IS NULL ORDER BY id`);
3. set aside (quarantine) any row that must never be sent: a card number in the payload's free text
   (the writer masks those, so only a row written some other way can hold one), a payload
   that is not the JSON document of its event, a message the broker can never take;
4. produce the rest with an idempotent producer, keyed by user_id, signed, and wait for the broker;
5. mark published only the rows the broker confirmed, and only the run of them, in id order, up to
   the first one it did not: what follows is sent again next round. A duplicate carries the same
   event id, which the contract allows; a gap or a reordering for one user never happens.

A failed delivery drops the producer (Tansu forgets producer ids when it restarts, and an idempotent
librdkafka producer never recovers from that), re-checks the topic and backs off exponentially.
Nothing is marked published without the broker's acknowledgement, so nothing is lost: a crash at
any instant leaves unmarked rows that the next leader sends again. See docs/events.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, Table, bindparam, case, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from config import Settings

from ..adapters.orm import OutboxEventRow, RelayLeaseRow
from ..domain.cards import find_card_number_in_free_text, may_hold_card_number

logger = logging.getLogger(__name__)

LEASE_NAME = "outbox"
CONTENT_TYPE = b"application/cloudevents+json"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUTBOX = cast(Table, OutboxEventRow.__table__)
_LEASES = cast(Table, RelayLeaseRow.__table__)



@dataclass(frozen=True)
class _RelayMetrics:
    published: Counter
    quarantined: Counter
    is_leader: Gauge


_metrics_lock = threading.Lock()
_relay_metrics: _RelayMetrics | None = None


def relay_metrics() -> _RelayMetrics:
    """The relay's own metrics, registered when the process first builds a relay (so an API process,
    which imports this module for the outbox collector, does not show a relay_is_leader of 0)."""
    global _relay_metrics
    with _metrics_lock:
        if _relay_metrics is None:
            _relay_metrics = _RelayMetrics(
                Counter("outbox_published", "Outbox events confirmed by the broker and marked published"),
                Counter("outbox_quarantined", "Outbox rows set aside and never sent (card number, bad payload)"),
                Gauge("relay_is_leader", "1 while this process's relay holds the outbox lease"),
            )
        return _relay_metrics


# --- signing ------------------------------------------------------------------------------------


def sign(value: bytes, key: bytes | str) -> str:
    """The `signature` header: hex HMAC-SHA256 of the message value."""
    raw_key = key.encode() if isinstance(key, str) else key
    return hmac.new(raw_key, value, hashlib.sha256).hexdigest()


def verify_signature(value: bytes, signature: bytes | str, key: bytes | str) -> bool:
    """What a consumer does with the `signature` header (constant-time comparison)."""
    given = signature.decode() if isinstance(signature, bytes) else signature
    return hmac.compare_digest(sign(value, key), given)


# --- the guard ----------------------------------------------------------------------------------


def unpublishable_reason(event_id: str, payload: str) -> str | None:
    """Why this row must never be sent, or None. The reason never contains the payload's content."""
    try:
        document = json.loads(payload)
    except ValueError as exc:
        return f"payload is not JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})"
    if not isinstance(document, dict) or document.get("id") != event_id:
        return "payload is not the CloudEvents document of this event (id differs)"
    # Scanning the raw JSON for a long digit run is ~10x cheaper than walking the parsed document with
    # the Luhn regex, so only the rare payload with such a run gets the full check.
    if may_hold_card_number(payload):
        # Free text only, as the writer masks it: ids (user_id, subject, utr, *_id) are not card data,
        # and an event about money that moved must reach the wallet whatever digits its ids hold.
        field = find_card_number_in_free_text(document)
        if field is not None:
            return f"card number in payload field {field}"
    return None


# --- the relay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    event_id: str
    event_type: str
    user_id: str
    payload: str


@dataclass(frozen=True)
class Delivered:
    """One row the broker confirmed, for the optional `on_delivered` hook (benchmarks, tests)."""

    id: int
    event_id: str
    acked_at: float  # time.time() when the delivery report arrived


_PENDING = object()  # no delivery report yet
_NOT_SENT = object()  # not produced: a row before it could not be


@dataclass
class _Sent:
    """A produced batch waiting for its delivery reports."""

    sendable: list[OutboxMessage]
    results: list[object]  # per row: _PENDING, None (confirmed, or set aside), or the error
    acked_at: list[float]
    produced: int = 0
    complete: bool = True  # every row was handed to the producer
# Broker answers about one message that no retry changes.
_REFUSED_FOR_GOOD = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG, KafkaError.INVALID_RECORD}
)


class _Marker:
    """Marks confirmed rows published on a connection of its own while the relay sends the next batch.

    Marking late costs at most a duplicate after a crash; what matters is never marking a row the
    broker did not confirm, and that is decided before a row gets here.
    """

    def __init__(self, engine: Engine, on_marked: Callable[[int], None]) -> None:
        self._engine = engine
        self._on_marked = on_marked
        self._queue: queue.Queue[list[int] | None] = queue.Queue(maxsize=2)  # back-pressure on the sender
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="outbox-marker", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int]) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(ids)

    def wait_idle(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        self.wait_idle()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (ids := self._queue.get()) is not None:
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        update(_OUTBOX)
                        .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
                        .values(published_at=datetime.now(UTC)),
                        {"ids": ids},
                    )
                self._on_marked(len(ids))
            except Exception as exc:  # noqa: BLE001 - the rows stay unpublished and are sent again
                logger.warning("could not mark rows published; they will be sent again",
                               extra={"rows": len(ids), "error": f"{type(exc).__name__}: {exc}"})
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


class OutboxRelay:
    """Publishes the outbox while it holds the lease. `run()` until `stop()` (or a signal handler calling it).

    The engine is the relay's own; rows are read and marked with Core statements in short
    transactions, never one held open across a wait for the broker.

    Pipelining, for throughput: while the broker acknowledges a full batch the relay already reads
    the rows after it, and a marker thread marks a batch published while the next is sent. A batch
    is never *produced* before every row of the one before is confirmed, so a failure cannot let a
    later event of a user overtake an earlier one. A claim from the lowest unpublished id (every
    round that has no prefetched batch, and at least every second) first waits for the marker, so
    rows confirmed but not yet marked are not sent twice.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        producer_config: dict[str, Any] | None = None,
        holder: str | None = None,
        batch_size: int | None = None,
        poll_interval: float = 0.005,
        lease_ttl: float = 5.0,
        delivery_timeout: float = 5.0,
        max_backoff: float = 5.0,
        on_delivered: Callable[[Sequence[Delivered]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.topic = settings.EVENTS_TOPIC
        self.partitions = settings.EVENTS_TOPIC_PARTITIONS
        self.bootstrap = settings.KAFKA_BOOTSTRAP_SERVERS
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size or settings.RELAY_BATCH_SIZE
        self.poll_interval = poll_interval
        self.lease_ttl = lease_ttl
        self.renew_every = lease_ttl / 5  # also how often a standby tries to take over
        self.delivery_timeout = delivery_timeout
        self.max_backoff = max_backoff
        self.on_delivered = on_delivered
        self._signing_key = settings.EVENT_SIGNING_KEY.encode()
        self._signing_key_id = settings.EVENT_SIGNING_KEY_ID.encode()
        self._producer_config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": "payment-service-relay",
            "enable.idempotence": True,
            "acks": "all",
            # Measured on Tansu (bench/relay.py): 5 ms fills larger requests when a backlog drains
            # and still keeps commit-to-ack p99 around 10-20 ms at 1000 events/s.
            "linger.ms": 5,
            # Never time a message out inside librdkafka: an idempotent producer skips timed-out
            # messages and goes on with later ones (librdkafka's epoch bump), which would let a later
            # event of a user land before an earlier one. Without timeouts the broker only ever holds,
            # per partition, a prefix of what this producer sent; when we stop waiting
            # (delivery_timeout) we purge and destroy the producer, and resend from the first
            # unconfirmed row with a new one.
            "message.timeout.ms": 0,
            # The Java client's partitioner: the same user_id lands on the same partition whoever produces.
            "partitioner": "murmur2_random",
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 1000,
            "logger": _LIBRDKAFKA_LOG,
            "error_cb": self._on_client_error,
            **(producer_config or {}),
        }
        self._metrics = relay_metrics()
        self._stop = threading.Event()
        self._producer: Producer | None = None
        self._producer_broken = False
        self._admin: AdminClient | None = None
        self._topic_ready = False
        self._lease_row_checked = False
        self.is_leader = False
        self.fencing: int | None = None
        self._lease_valid_until = 0.0  # time.monotonic()
        self._renewed_at = float("-inf")
        self._failures = 0
        self.published_count = 0  # this instance's, for tests and logs
        self._marker: _Marker | None = None
        self._claimed_at = 0.0  # when a batch was last claimed from the lowest unpublished id
        self._prefetched: list[OutboxMessage] | None = None
        self._in_flight: _Sent | None = None  # produced, settled after the next batch is produced

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to return after the round in flight (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        logger.info("relay started", extra={"holder": self.holder, "topic": self.topic})
        self._marker = _Marker(self.engine, self._on_marked)
        try:
            while not self._stop.is_set():
                try:
                    delay = self.run_once()
                except Exception as exc:  # noqa: BLE001 - the database or the broker is away: back off, retry
                    delay = self._backoff()
                    logger.warning(
                        "relay round failed; retrying",
                        extra={"error": f"{type(exc).__name__}: {exc}", "retry_in": round(delay, 2)},
                    )
                if delay > 0:
                    self._sleep(delay)
        finally:
            self._shutdown()

    def run_once(self) -> float:
        """One round; returns how long to wait before the next."""
        if not self._ensure_leader():
            self._prefetched = None
            if self._in_flight is not None:  # purged when the lease was lost: mark what was confirmed
                in_flight, self._in_flight = self._in_flight, None
                self._settle(in_flight)
            return self.renew_every
        if not self._topic_ready:
            self._ensure_topic()
            # Built now, not with the first batch: an idempotent producer spends its first few hundred
            # milliseconds getting a producer id, and the events waiting meanwhile would pay for it.
            self._get_producer().poll(0)
        batch, self._prefetched = self._prefetched, None
        if batch is None:
            if self._in_flight is not None:
                in_flight, self._in_flight = self._in_flight, None
                if not self._settle(in_flight):
                    return self._failed()
            if self._marker is not None:
                self._marker.wait_idle()  # or rows confirmed but not yet marked would be claimed again
            batch = self._claim()
            self._claimed_at = time.monotonic()
        if not batch:
            return self.poll_interval

        sent = self._send(batch)
        previous, self._in_flight = self._in_flight, None
        # A full batch: more are likely waiting. Read the rows after it while the broker works, and
        # settle it only after the next batch has been produced. Not for more than a second in a row:
        # a row that committed late with a lower id (a longer transaction) is only seen by a claim
        # from the lowest unpublished id.
        if sent.complete and len(batch) == self.batch_size and time.monotonic() - self._claimed_at < 1.0:
            try:
                self._prefetched = self._claim(after=batch[-1].id) or None
            except Exception as exc:  # noqa: BLE001 - read them next round instead
                logger.debug("prefetch failed", extra={"error": type(exc).__name__})
        if previous is not None and not self._settle(previous, more_queued=True):
            # The batch just produced follows it in id order: none of it may be marked.
            return self._failed()
        if self._prefetched is not None:
            self._in_flight = sent
            return 0.0
        if not self._settle(sent):
            return self._failed()
        self._failures = 0
        return 0.0

    def _failed(self) -> float:
        """After an unconfirmed delivery: a new producer (an idempotent one does not recover from a broker
        that forgot its producer id), a fresh look at the topic (a restarted broker may have lost it),
        and everything from the first unconfirmed row again, after a pause."""
        self._close_producer(purge=True)
        self._topic_ready = False
        self._prefetched = None
        self._in_flight = None
        return self._backoff()

    def _on_marked(self, count: int) -> None:
        self.published_count += count
        self._metrics.published.inc(count)

    def _sleep(self, delay: float) -> None:
        """Wait, renewing the lease meanwhile: a leader backing off from a dead broker stays the leader
        (a standby could do no better), instead of the lease flapping between relays."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, self.renew_every))
            if self.is_leader and not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    self._ensure_leader()
                except Exception:  # noqa: BLE001 - the database is away; the next round reports it
                    logger.debug("lease renewal while backing off failed", exc_info=True)

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(self.max_backoff, 0.1 * 2 ** (self._failures - 1)))

    def _shutdown(self) -> None:
        if self._in_flight is not None:  # finish the batch in flight
            in_flight, self._in_flight = self._in_flight, None
            try:
                self._settle(in_flight)
            except Exception:  # noqa: BLE001 - unmarked rows are sent again by the next leader
                logger.warning("could not settle the last batch", exc_info=True)
        self._close_producer(purge=False)
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        if self.is_leader:
            try:
                self._release_lease()
            except Exception as exc:  # noqa: BLE001 - it expires on its own in lease_ttl
                logger.warning("could not release the relay lease", extra={"error": type(exc).__name__})
        self._set_leader(False)
        logger.info("relay stopped", extra={"holder": self.holder, "published": self.published_count})

    # -- leader election ------------------------------------------------------------------------

    def _ensure_leader(self) -> bool:
        now = time.monotonic()
        if self.is_leader and now - self._renewed_at < self.renew_every:
            return True
        try:
            acquired = self._try_acquire()
        except Exception:
            if self.is_leader and time.monotonic() >= self._lease_valid_until:
                self._set_leader(False)  # could not renew in time: someone else may hold it now
                self._close_producer(purge=True)
            raise
        if acquired:
            self._renewed_at = now
            # Counted from before the query: the database's expiry is at least this late.
            self._lease_valid_until = now + self.lease_ttl * 0.8
        elif self.is_leader:
            logger.warning("relay lost the lease", extra={"holder": self.holder})
            self._close_producer(purge=True)
        self._set_leader(acquired)
        return acquired

    def _set_leader(self, leader: bool) -> None:
        if leader and not self.is_leader:
            logger.info("relay is the leader", extra={"holder": self.holder, "fencing": self.fencing})
        elif self.is_leader and not leader:
            logger.info("relay is standing by", extra={"holder": self.holder})
        self.is_leader = leader
        self._metrics.is_leader.set(1 if leader else 0)

    def _try_acquire(self) -> bool:
        """Take or renew the lease; True if we hold it now (the UPDATE's row lock decides races)."""
        with self.engine.begin() as conn:
            if not self._lease_row_checked:
                self._insert_lease_row(conn)
            now = _db_now(conn)
            lease = _LEASES
            result = conn.execute(
                update(lease)
                .where(
                    lease.c.name == LEASE_NAME,
                    or_(lease.c.holder == self.holder, lease.c.expires_at < now),
                )
                # MySQL evaluates SET left to right, seeing values already set: fencing goes first,
                # while `holder` is still the previous holder's.
                .ordered_values(
                    (
                        lease.c.fencing,
                        case((lease.c.holder == self.holder, lease.c.fencing), else_=lease.c.fencing + 1),
                    ),
                    (lease.c.holder, self.holder),
                    (lease.c.expires_at, now + timedelta(seconds=self.lease_ttl)),
                )
            )
            if result.rowcount != 1:
                return False
            self.fencing = conn.execute(select(lease.c.fencing).where(lease.c.name == LEASE_NAME)).scalar_one()
            return True

    def _insert_lease_row(self, conn: Connection) -> None:
        exists = conn.execute(select(RelayLeaseRow.name).where(RelayLeaseRow.name == LEASE_NAME)).first()
        if exists is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(_LEASES).values(name=LEASE_NAME, holder=None, expires_at=_EPOCH, fencing=0)
                    )
            except IntegrityError:
                pass  # another relay inserted it first
        self._lease_row_checked = True

    def _release_lease(self) -> None:
        """Let a standby take over at once instead of after lease_ttl."""
        with self.engine.begin() as conn:
            now = _db_now(conn)
            conn.execute(
                update(RelayLeaseRow)
                .where(RelayLeaseRow.name == LEASE_NAME, RelayLeaseRow.holder == self.holder)
                .values(holder=None, expires_at=now - timedelta(microseconds=1))
            )

    # -- the topic ------------------------------------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            config: dict[str, Any] = {
                "bootstrap.servers": self.bootstrap,
                "socket.timeout.ms": 3000,
                "logger": _LIBRDKAFKA_LOG,
            }
            self._admin = AdminClient(config)
        return self._admin

    def _ensure_topic(self) -> None:
        """Create the topic if it is missing (a restarted in-memory broker loses it). Raises if the broker is away.

        Create first, then look: asking a broker about one named topic may auto-create it with the
        broker's default partition count (Tansu does).
        """
        admin = self._admin_client()
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
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(f"topic {self.topic} not visible after creating it")
            self._stop.wait(0.1)
        self._topic_ready = True

    # -- claim, guard, produce, mark ------------------------------------------------------------

    def _claim(self, after: int = 0) -> list[OutboxMessage]:
        t = _OUTBOX
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.id, t.c.event_id, t.c.event_type, t.c.user_id, t.c.payload)
                .where(t.c.published_at.is_(None), t.c.quarantined_at.is_(None), t.c.id > after)
                .order_by(t.c.id)
                .limit(self.batch_size)
            ).all()
        return [OutboxMessage(*row) for row in rows]

    def _send(self, batch: list[OutboxMessage]) -> _Sent:
        """Set aside what must never be sent, produce the rest in id order; does not wait for the broker."""
        quarantine: list[tuple[OutboxMessage, str]] = []
        sendable: list[OutboxMessage] = []
        for msg in batch:
            reason = unpublishable_reason(msg.event_id, msg.payload)
            if reason is None:
                sendable.append(msg)
            else:
                quarantine.append((msg, reason))
        if quarantine:
            self._quarantine(quarantine)

        producer = self._get_producer()
        sent = _Sent(sendable, [_PENDING] * len(sendable), [0.0] * len(sendable))
        results, acked_at = sent.results, sent.acked_at
        for i, msg in enumerate(sendable):
            try:
                value = msg.payload.encode()
            except UnicodeEncodeError:
                results[i] = None  # nothing to wait for, and never marked published (no ack time)
                self._quarantine([(msg, "payload is not encodable as UTF-8")])
                continue
            headers = [
                ("event_id", msg.event_id.encode()),
                ("event_type", msg.event_type.encode()),
                ("signature", sign(value, self._signing_key).encode()),
                ("signature_key_id", self._signing_key_id),
                ("content-type", CONTENT_TYPE),
            ]

            def report(err: KafkaError | None, _m: Any, i: int = i) -> None:
                results[i] = err
                acked_at[i] = time.time()

            try:
                self._produce(producer, value=value, key=msg.user_id.encode(), headers=headers, on_delivery=report)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    results[i] = None
                    self._quarantine([(msg, f"message too large for the broker ({len(value)} bytes)")])
                    continue
                results[i] = err if isinstance(err, KafkaError) else exc
                results[i + 1 :] = [_NOT_SENT] * (len(results) - i - 1)
                sent.complete = False
                break  # keep order: nothing after a row that could not be produced
            sent.produced += 1
        return sent

    def _settle(self, sent: _Sent, *, more_queued: bool = False) -> bool:
        """Wait for the batch's delivery reports, mark the confirmed run; True if every row was confirmed."""
        self._wait_for_reports(sent, more_queued)
        results, n = sent.results, len(sent.sendable)
        # The confirmed run, in id order, up to the first row without a confirmation.
        confirmed = 0
        while confirmed < n and results[confirmed] is None:
            confirmed += 1
        # Rows set aside while producing (result None without an ack time) are not published.
        to_mark = [i for i in range(confirmed) if sent.acked_at[i]]
        if to_mark:
            self._mark_published([sent.sendable[i].id for i in to_mark])
            if self.on_delivered is not None:
                self.on_delivered(
                    [Delivered(sent.sendable[i].id, sent.sendable[i].event_id, sent.acked_at[i]) for i in to_mark]
                )
        if confirmed == n and not self._producer_broken:
            return True

        first_bad = results[confirmed] if confirmed < n else None
        if isinstance(first_bad, KafkaError) and first_bad.code() in _REFUSED_FOR_GOOD:
            # The broker will never take this one (too large, say): set it aside, or it blocks everything.
            self._quarantine([(sent.sendable[confirmed], f"refused by the broker: {_describe(first_bad)}")])
        logger.warning(
            "broker did not confirm every message; resending from the first unconfirmed",
            extra={
                "confirmed": len(to_mark),
                "unconfirmed": n - confirmed,
                "pending": sum(1 for r in results if r is _PENDING),
                "error": _describe(first_bad),
                "produced": sent.produced,
            },
        )
        return False

    def _produce(self, producer: Producer, **kw: Any) -> None:
        while True:
            try:
                producer.produce(self.topic, **kw)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: serve delivery reports, then retry

    def _wait_for_reports(self, sent: _Sent, more_queued: bool) -> None:
        """Wait for the batch's delivery reports, renewing the lease meanwhile so a slow broker costs no takeover."""
        producer = self._producer
        deadline = time.monotonic() + self.delivery_timeout
        while producer is not None and any(r is _PENDING for r in sent.results):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if more_queued:
                producer.poll(min(0.1, remaining))  # the next batch is queued too: let it fill requests
            else:
                # Nothing else queued: flush, which also sends at once what linger.ms would hold back.
                producer.flush(min(0.1, remaining))
            if time.monotonic() - self._renewed_at >= self.renew_every:
                try:
                    if not self._ensure_leader():
                        return  # deposed (and the producer purged): what was confirmed is still marked
                except Exception:  # noqa: BLE001 - the database is away; the lease check decides later
                    logger.debug("lease renewal during a delivery wait failed", exc_info=True)

    def _mark_published(self, ids: list[int]) -> None:
        if self._marker is not None:
            self._marker.submit(ids)
            return
        with self.engine.begin() as conn:  # run_once() outside run(): mark here and now
            conn.execute(
                update(_OUTBOX)
                .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
                .values(published_at=datetime.now(UTC)),
                {"ids": ids},
            )
        self._on_marked(len(ids))

    def _quarantine(self, rows: Iterable[tuple[OutboxMessage, str]]) -> None:
        t = _OUTBOX
        now = datetime.now(UTC)
        rows = list(rows)
        with self.engine.begin() as conn:
            for msg, reason in rows:
                conn.execute(
                    update(t)
                    .where(t.c.id == msg.id, t.c.published_at.is_(None))
                    .values(quarantined_at=now, last_error=reason)
                )
        for msg, reason in rows:
            # Never the payload: it may hold the very card number we refuse to send.
            logger.error(
                "outbox event quarantined, not sent",
                extra={"outbox_id": msg.id, "event_id": msg.event_id, "event_type": msg.event_type, "reason": reason},
            )
        self._metrics.quarantined.inc(len(rows))

    # -- the producer ---------------------------------------------------------------------------

    def _get_producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._producer_config)
            self._producer_broken = False
        return self._producer

    def _close_producer(self, *, purge: bool) -> None:
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
            self._producer_broken = True
            logger.error("producer fatal error; it will be rebuilt", extra={"error": _describe(err)})
        else:
            logger.debug("kafka client error", extra={"error": _describe(err)})


class _LibrdkafkaLog:
    """librdkafka's own log lines, at most WARNING: it reports every refused reconnect as an error,
    while whether an outage matters is the relay's call (it logs its own warnings and errors)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(__name__ + ".librdkafka")

    def log(self, level: int, msg: str, *args: Any) -> None:
        self._logger.log(min(level, logging.WARNING), msg, *args)


_LIBRDKAFKA_LOG = _LibrdkafkaLog()


def _describe(err: object) -> str | None:
    if err is None:
        return None
    if err is _PENDING:
        return "no delivery report"
    if err is _NOT_SENT:
        return "not sent"
    if isinstance(err, KafkaError):
        return f"{err.name()}: {err.str()}"
    return f"{type(err).__name__}: {err}"


def _db_now(conn: Connection) -> datetime:
    """The database's clock: every relay compares lease times on the same clock."""
    if conn.dialect.name in ("mysql", "mariadb"):
        value = conn.execute(text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
        return value.replace(tzinfo=UTC)
    return datetime.now(UTC)  # SQLite: one machine, one clock


# --- purge --------------------------------------------------------------------------------------


def purge_published(engine: Engine, older_than: timedelta, *, batch_size: int = 1000) -> int:
    """Delete rows published more than `older_than` ago, in batches; returns how many went.

    Short transactions, each a range of the (published_at, id) index, so the relay and the writers
    are never held up. Quarantined rows are never published, so they stay for investigation.
    """
    t = _OUTBOX
    cutoff = datetime.now(UTC) - older_than
    total = 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(t.c.id)
                    .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
                    .order_by(t.c.published_at, t.c.id)
                    .limit(batch_size)
                ).scalars()
            )
            if ids:
                conn.execute(delete(t).where(t.c.id.in_(bindparam("ids", expanding=True))), {"ids": ids})
        total += len(ids)
        if len(ids) < batch_size:
            return total


# --- metrics read from the database at scrape time ----------------------------------------------


def outbox_stats(engine: Engine) -> tuple[int, float]:
    """(rows waiting to be published, age in seconds of the oldest of them, 0 when none)."""
    t = _OUTBOX
    waiting = (t.c.published_at.is_(None), t.c.quarantined_at.is_(None))
    with engine.connect() as conn:
        backlog = conn.execute(select(func.count()).select_from(t).where(*waiting)).scalar_one()
        oldest = conn.execute(select(t.c.created_at).where(*waiting).order_by(t.c.id).limit(1)).scalar()
    age = max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest is not None else 0.0
    return int(backlog), age


class OutboxCollector(Collector):
    """`outbox_backlog` and `outbox_oldest_unpublished_age_seconds`, queried when Prometheus scrapes.

    Engine sources are named ("api", "relay") and tried in order; one that returns None (the API's
    outside a request) is skipped. A database that is away leaves the two metrics out of that scrape.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Engine | None]] = {}

    def set_source(self, name: str, source: Callable[[], Engine | None]) -> None:
        self._sources[name] = source

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("outbox_backlog", "Outbox rows waiting to be published")
        yield GaugeMetricFamily("outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row")

    def collect(self) -> Iterator[Metric]:
        engine = next((e for e in (source() for source in list(self._sources.values())) if e is not None), None)
        if engine is None:
            return
        try:
            backlog, age = outbox_stats(engine)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is away
            logger.warning("outbox metrics unavailable", extra={"error": type(exc).__name__})
            return
        yield GaugeMetricFamily("outbox_backlog", "Outbox rows waiting to be published", value=backlog)
        yield GaugeMetricFamily(
            "outbox_oldest_unpublished_age_seconds", "Age of the oldest unpublished outbox row", value=age
        )


_collector_lock = threading.Lock()
_collector: OutboxCollector | None = None


def install_outbox_collector(
    name: str, source: Callable[[], Engine | None], registry: CollectorRegistry = REGISTRY
) -> OutboxCollector:
    """Register the outbox collector with the registry (once per process) and add an engine source."""
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = OutboxCollector()
            registry.register(_collector)
        _collector.set_source(name, source)
        return _collector


def outbox_collector() -> OutboxCollector | None:
    """The installed collector, for a per-scrape registry (Prometheus multiprocess mode)."""
    return _collector
