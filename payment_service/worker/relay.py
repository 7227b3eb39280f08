"""The outbox relay: publishes `outbox_events` rows to Kafka in id order, from one elected leader.

A loop over three adapters: the outbox store (claim, mark, quarantine, lease), the Kafka publisher
(producer, topic, signed messages, delivery reports) and the binlog watcher (wakes the loop on commit;
polling where there is no binlog). One round of the leader: claim the oldest unpublished rows, set
aside any that must never be sent, produce the rest, and mark published only the run of rows, in id
order, that the broker confirmed, up to the first it did not (what follows is sent again). Nothing is
marked without the broker's acknowledgement, so a crash at any instant leaves unmarked rows that the
next leader sends again, with the same event id. See docs/events.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from config import Settings

from ..adapters.binlog_watcher import RelayWaker
from ..adapters.kafka_publisher import PENDING, Delivered, KafkaPublisher, Sent, describe, refused_for_good
from ..adapters.outbox import unpublishable_reason
from ..adapters.outbox_metrics import relay_metrics
from ..adapters.outbox_store import BackgroundMarker, LeaderLease, OutboxMessage, SqlOutboxStore

logger = logging.getLogger(__name__)


class OutboxRelay:
    """Publishes the outbox while it holds the lease. `run()` until `stop()` (or a signal handler calling it).

    Pipelining: while the broker acknowledges a batch, the loop may read the rows after it and produce
    them before it settles the first (`_may_read_ahead`); a failure in the first drops both, so a later
    event of a user never overtakes an earlier one (the broker holds, per partition, a prefix of what one
    producer sent). Claims skip the rows the marker thread has yet to mark: they are not sent twice.
    """

    def __init__(
        self, store: SqlOutboxStore, publisher: KafkaPublisher, waker: RelayWaker, settings: Settings, *,
        holder: str | None = None, batch_size: int | None = None, lease_ttl: float = 5.0,
        max_backoff: float = 5.0, on_delivered: Callable[[Sequence[Delivered]], None] | None = None,
    ) -> None:
        # Built by bootstrap.build_relay: the store, the publisher and the waker are its adapters.
        self.store, self.publisher, self.waker = store, publisher, waker
        self.topic = settings.EVENTS_TOPIC
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size or settings.RELAY_BATCH_SIZE
        self.lease = LeaderLease(self.store, self.holder, lease_ttl)
        self.renew_every, self.max_backoff, self.on_delivered = self.lease.renew_every, max_backoff, on_delivered
        self._metrics = relay_metrics()
        self._stop = threading.Event()
        self.is_leader, self._topic_ready, self._failures = False, False, 0
        self._wakeable = False  # the wait after this round may be cut short by a wake-up
        self.published_count = 0  # this instance's, for tests and logs
        self._marker: BackgroundMarker | None = None
        self._claimed_at = 0.0  # when a batch was last claimed from the lowest unpublished id
        self._prefetched: list[OutboxMessage] | None = None
        self._in_flight: Sent | None = None  # produced, settled after the next batch is produced

    @property
    def fencing(self) -> int | None:
        return self.lease.fencing

    def stop(self) -> None:
        """Ask run() to return after the round in flight (safe from a signal handler or another thread)."""
        self._stop.set()
        self.waker.flag.set()

    def run(self) -> None:
        logger.info("relay started", extra={"holder": self.holder, "topic": self.topic})
        self._marker = BackgroundMarker(self.store, self._on_marked)
        try:
            while not self._stop.is_set():
                try:
                    delay = self.run_once()
                except Exception as exc:  # noqa: BLE001 - the database or the broker is away: back off, retry
                    self._wakeable, delay = False, self._backoff()
                    logger.warning("relay round failed; retrying",
                                   extra={"error": f"{type(exc).__name__}: {exc}", "retry_in": round(delay, 2)})
                if delay > 0:
                    self._sleep(delay)
        finally:
            self._shutdown()

    def run_once(self) -> float:
        """One round; returns how long to wait before the next."""
        self._wakeable = False
        if not self._ensure_leader():
            self.waker.stop()
            self._prefetched = None
            self._settle_in_flight()  # purged when the lease was lost: mark what was confirmed
            return self.renew_every
        if not self.waker.started and not self._stop.is_set():
            self.waker.start(wait=self.renew_every)  # within a renewal: the lease is not renewed meanwhile
        if not self._topic_ready:
            self.publisher.ensure_topic(self._stop.wait)
            self.publisher.warm()
            self._topic_ready = True
        self.waker.take()
        batch, self._prefetched = self._prefetched, None
        if batch is None:
            if not self._settle_in_flight():
                return self._failed()
            # Not the rows confirmed but still being marked: they would be sent twice.
            batch = self.store.claim(self.batch_size, skip=self._marker.pending_ids() if self._marker else ())
            self._claimed_at = time.monotonic()
        if not batch:
            self._wakeable = True
            return self.waker.idle_delay()
        self.waker.found_rows(len(batch))
        sent = self._send(batch)
        previous, self._in_flight = self._in_flight, None
        if previous is not None and self.publisher.answered(previous):  # mark it now: the marker starts sooner
            if not self._settle(previous, more_queued=True):
                return self._failed()  # the batch just produced follows it in id order: none of it is marked
            previous = None
        full = len(batch) == self.batch_size
        if full and self._may_read_ahead(sent):  # more are likely waiting: read them while the broker works
            self._prefetch(batch[-1].id)
        if previous is not None and not self._settle(previous, more_queued=full):
            return self._failed()  # the batch just produced follows it in id order: none of it is marked
        if self._prefetched is not None or self._read_ahead_while_unanswered(sent, batch[-1].id):
            self._in_flight = sent
            return 0.0
        if not self._settle(sent):
            return self._failed()
        self._failures = 0
        return 0.0

    # -- waiting for work -----------------------------------------------------------------------------

    def _sleep(self, delay: float) -> None:
        """Wait, renewing the lease meanwhile: a leader backing off from a dead broker stays the leader
        (a standby could do no better), instead of the lease flapping between relays."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            step = min(deadline - now, self.renew_every)
            if self.is_leader:
                step = min(step, max(0.001, self.lease.renewed_at + self.renew_every - now))
            if self._wakeable and self.waker.flag.wait(step):
                return
            if not self._wakeable:
                self._stop.wait(step)
            if self.is_leader and not self._stop.is_set() and time.monotonic() < deadline:
                self._tick()

    def _tick(self) -> bool:
        """Renew the lease when due; False once deposed."""
        try:
            return self._ensure_leader()
        except Exception:  # noqa: BLE001 - the database is away; the next round reports it
            logger.debug("lease renewal failed", exc_info=True)
            return self.is_leader

    # -- send, settle, mark -----------------------------------------------------------------------------

    def _send(self, batch: list[OutboxMessage]) -> Sent:
        """Set aside what must never be sent, produce the rest in id order; does not wait for the broker."""
        reasons = [unpublishable_reason(msg.event_id, msg.payload) for msg in batch]
        sent = self.publisher.send([msg for msg, reason in zip(batch, reasons, strict=True) if reason is None])
        aside = [(msg, reason) for msg, reason in zip(batch, reasons, strict=True) if reason is not None]
        if aside or sent.set_aside:
            self._quarantine(aside + sent.set_aside)
        return sent

    def _may_read_ahead(self, sent: Sent) -> bool:
        """Rows after `sent` may be read and produced before it is settled; not for more than a second in a
        row: a row that committed late with a lower id is seen by a claim from the lowest unpublished id."""
        return sent.complete and not self._stop.is_set() and time.monotonic() - self._claimed_at < 1.0

    def _read_ahead_while_unanswered(self, sent: Sent, last_id: int) -> bool:
        """While the broker has not answered for `sent`, read the rows after it (to produce behind it) at each
        binlog wake-up and a poll interval later, doubling: polling, or a wake-up before its row was visible."""
        delay, look_at = self.waker.poll_interval, 0.0

        def time_to_look() -> bool:
            return self.waker.flag.is_set() or time.monotonic() >= look_at

        while self._may_read_ahead(sent):
            look_at = time.monotonic() + delay
            if not self.publisher.wait(sent, more_queued=False, tick=self._tick, interrupt=time_to_look):
                return False  # answered (or given up, or deposed): settled as usual
            self.waker.take()
            self._prefetch(last_id)
            if self._prefetched is not None:
                return True
            delay = min(2 * delay, 0.1)
        return False

    def _prefetch(self, last_id: int) -> None:
        try:
            self._prefetched = self.store.claim(self.batch_size, after=last_id) or None
        except Exception as exc:  # noqa: BLE001 - read them next round instead
            logger.debug("prefetch failed", extra={"error": type(exc).__name__})

    def _settle_in_flight(self) -> bool:
        """Settle the batch produced last round, if there is one; False if not every row was confirmed."""
        in_flight, self._in_flight = self._in_flight, None
        return in_flight is None or self._settle(in_flight)

    def _settle(self, sent: Sent, *, more_queued: bool = False) -> bool:
        """Wait for the batch's delivery reports, mark the confirmed run; True if every row was confirmed."""
        self.publisher.wait(sent, more_queued=more_queued, tick=self._tick)
        confirmed, to_mark = sent.confirmed_run()
        if to_mark:
            self._mark([sent.rows[i].id for i in to_mark])
            if self.on_delivered is not None:
                self.on_delivered([Delivered(sent.rows[i].id, sent.rows[i].event_id, sent.acked_at[i])
                                   for i in to_mark])
        if confirmed == len(sent.rows) and not self.publisher.broken:
            return True
        first_bad = sent.first_error(confirmed)
        if refused_for_good(first_bad):  # it would block everything after it: set it aside
            self._quarantine([(sent.rows[confirmed], f"refused by the broker: {describe(first_bad)}")])
        logger.warning("broker did not confirm every message; resending from the first unconfirmed", extra={
            "confirmed": len(to_mark), "unconfirmed": len(sent.rows) - confirmed, "error": describe(first_bad),
            "pending": sum(1 for r in sent.results if r is PENDING), "produced": sent.produced})
        return False

    def _mark(self, ids: list[int]) -> None:
        if self._marker is not None:
            self._marker.submit(ids)
        else:  # run_once() outside run(): mark here and now
            self._on_marked(self.store.mark_published(ids))

    def _on_marked(self, count: int) -> None:
        self.published_count += count
        self._metrics.published.inc(count)

    def _quarantine(self, rows: list[tuple[OutboxMessage, str]]) -> None:
        self.store.quarantine(rows)  # and logs each at ERROR, never with its payload
        self._metrics.quarantined.inc(len(rows))

    def _failed(self) -> float:
        """After an unconfirmed delivery: a new producer (an idempotent one does not recover from a broker
        that forgot its producer id), a fresh look at the topic (a restarted broker may have lost it),
        and everything from the first unconfirmed row again, after a pause."""
        self.publisher.close(purge=True)
        self._topic_ready, self._prefetched, self._in_flight = False, None, None
        return self._backoff()

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(self.max_backoff, 0.1 * 2 ** (self._failures - 1)))

    def _shutdown(self) -> None:
        try:
            self._settle_in_flight()  # finish the batch in flight
        except Exception:  # noqa: BLE001 - unmarked rows are sent again by the next leader
            logger.warning("could not settle the last batch", exc_info=True)
        self.publisher.close(purge=False)
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        self.waker.stop()
        if self.is_leader:
            try:
                self._release_lease()
            except Exception as exc:  # noqa: BLE001 - it expires on its own in lease_ttl
                logger.warning("could not release the relay lease", extra={"error": type(exc).__name__})
        self._set_leader(False)
        self.store.close()
        logger.info("relay stopped", extra={"holder": self.holder, "published": self.published_count})

    # -- leader election --------------------------------------------------------------------------------

    def _ensure_leader(self) -> bool:
        was_leader = self.is_leader
        if was_leader and not self.lease.due():
            return True
        try:
            return self.lease.renew()
        finally:
            if was_leader and not self.lease.held:  # lost, or not renewed in time: someone else may hold it
                logger.warning("relay lost the lease", extra={"holder": self.holder})
                self.publisher.close(purge=True)
            self._set_leader(self.lease.held)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            logger.info("relay is the leader" if leader else "relay is standing by",
                        extra={"holder": self.holder, "fencing": self.fencing})
        self.is_leader = leader
        self._metrics.is_leader.set(1 if leader else 0)

    def _release_lease(self) -> None:
        self.store.release_lease(self.holder)


