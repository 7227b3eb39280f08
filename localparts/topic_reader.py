"""Reading a topic in tests without consumer groups.

Tansu hands out consumer-group assignments only after ~20 s, so tests read with ``assign()``:
every partition of the topic, from the beginning, and wait for what they expect with a deadline.

    with TopicReader(bootstrap, "payment.events") as reader:
        [captured] = reader.wait_for(lambda r: r.header("event_type") == b"PAYMENT_CAPTURED", count=1)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


@dataclass(frozen=True)
class Record:
    """One consumed message, detached from librdkafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        """The first header with this name, or None."""
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        """The value decoded as JSON."""
        if self.value is None:
            return None
        return json.loads(self.value)


def _as_bytes(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()


class TopicReader:
    """Reads every partition of one topic from the beginning, with no consumer group involved.

    ``TopicReader.record_checks``: functions every record read goes through before it is kept; one that
    raises fails the read (tests/conftest.py adds the AsyncAPI check of payment.events topics).
    """

    record_checks: ClassVar[list[Callable[[Record], None]]] = []

    def __init__(self, bootstrap: str, topic: str, *, metadata_timeout: float = 15.0) -> None:
        self.topic = topic
        self.records: list[Record] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-reader-{uuid.uuid4().hex}",  # required by librdkafka; never joined
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
        try:
            partitions = self._partitions(metadata_timeout)
            self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        except BaseException:
            self._consumer.close()
            raise
        self._closed = False

    def _partitions(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                meta = self._consumer.list_topics(topic=self.topic, timeout=max(0.5, min(5.0, timeout)))
                info = meta.topics.get(self.topic)
                if info is not None and info.error is None and info.partitions:
                    return sorted(info.partitions)
                last = info.error if info is not None else "topic missing"
            except KafkaException as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topic {self.topic!r} has no partitions after {timeout}s ({last})")
            time.sleep(0.1)

    def poll(self, timeout: float = 0.2) -> list[Record]:
        """Fetch what is available now (waiting at most timeout), append it to .records and return it."""
        got: list[Record] = []
        msgs = self._consumer.consume(num_messages=500, timeout=timeout)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            _, ts = msg.timestamp()
            got.append(
                Record(
                    topic=msg.topic() or self.topic,
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                    key=_as_bytes(msg.key()),
                    value=_as_bytes(msg.value()),
                    headers=[(str(h[0]), _as_bytes(h[1])) for h in (msg.headers() or [])],
                    timestamp_ms=ts,
                )
            )
        for check in self.record_checks:
            for record in got:
                check(record)
        self.records.extend(got)
        return got

    def wait_for(
        self,
        predicate: Callable[[Record], bool] | None = None,
        count: int = 1,
        timeout: float = 15.0,
    ) -> list[Record]:
        """Wait until at least ``count`` records (of all read so far) match ``predicate``; return them.

        Raises AssertionError at the deadline, listing what was read.
        """
        match = predicate or (lambda _r: True)
        deadline = time.monotonic() + timeout
        while True:
            matching = [r for r in self.records if match(r)]
            if len(matching) >= count:
                return matching
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "\n".join(
                    f"  p{r.partition}@{r.offset} key={r.key!r} value={(r.value or b'')[:200]!r}" for r in self.records
                )
                raise AssertionError(
                    f"expected {count} matching records on {self.topic!r} within {timeout}s, "
                    f"got {len(matching)}; read {len(self.records)}:\n{seen}"
                )
            self.poll(min(0.2, remaining))

    def drain(self, quiet: float = 1.0) -> list[Record]:
        """Read until nothing new arrives for ``quiet`` seconds; return all records read so far."""
        last_new = time.monotonic()
        while time.monotonic() - last_new < quiet:
            if self.poll(0.1):
                last_new = time.monotonic()
        return list(self.records)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
