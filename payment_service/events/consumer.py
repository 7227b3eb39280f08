"""Consuming `payment.events`: verify the signature (with key rotation), parse the CloudEvent, process each id once.

Standard library only and no import from the rest of the service: a wallet service may copy this one file.
With confluent-kafka (docs/consuming-events.md has the complete loop, with manual offset commits):

    consumer = EventConsumer(keys={"2026-11": new_key, "2026-08": old_key}, store=InMemoryProcessedEvents())
    outcome = consumer.handle_message(msg, apply)   # apply(event) credits or debits the wallet
    kafka.commit(message=msg, asynchronous=False)   # only after handle_message returned

`handle_message` verifies the `signature` header over the value bytes with the key that
`signature_key_id` names, *before* parsing them; parses the value into a `CloudEvent`; and calls
`apply(event)` unless the store says that event id was processed already (delivery is at least once,
a redelivery always has the same id). It raises, and the offset must then not be committed:

- `UnknownSigningKey`: a key id this consumer has not been given. A configuration problem (the
  rotation's new key was not deployed here first), never the message's fault: stop, alert, fix the
  keys; the message is processed after the restart.
- `InvalidSignature`: a known key id whose signature does not match: a forged or damaged message. Never
  apply it; set it aside (log it, or a dead-letter topic) and commit past it.
- `MalformedEvent`: signed by us but not a CloudEvent of the contract: set aside like a forged one.
- anything `apply` raises: nothing is recorded as processed; the redelivery tries again.

The store is pluggable (`ProcessedEvents`). `InMemoryProcessedEvents` forgets on restart, so it only
suits tests, or an `apply` that is itself idempotent. In production keep the processed ids in the
database that holds the balances, and record the id in the same transaction as the change it
caused: then a crash either keeps both or neither, and a redelivery finds the id. A table
`processed_events (event_id VARCHAR(64) PRIMARY KEY, processed_at TIMESTAMP)`, and a store whose
`processing(event_id)` opens the transaction, looks the id up, yields, and on a clean exit inserts
the id and commits (the primary key turns two consumers racing on one id into one commit and one
rollback), rolling back on an exception; `apply` writes through the same connection. The doc has one.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

__all__ = [
    "CloudEvent", "EventConsumer", "EventVerifier", "InMemoryProcessedEvents", "InvalidSignature",
    "MalformedEvent", "Outcome", "ProcessedEvents", "SignatureError", "UnknownSigningKey", "parse_event",
    "EVENT_TYPES",
]

EVENT_TYPES = frozenset({
    "PAYMENT_CAPTURED", "PAYMENT_FAILED", "PAYMENT_EXPIRED", "PAYMENT_REFUNDED",
    "WITHDRAWAL_SETTLED", "WITHDRAWAL_FAILED", "WITHDRAWAL_REVERSED",
})
SOURCE = "payment-service"

Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


class SignatureError(Exception):
    """The message cannot be trusted: never apply it."""


class UnknownSigningKey(SignatureError):
    """`signature_key_id` names no key this consumer holds (or is missing): fix the configuration."""


class InvalidSignature(SignatureError):
    """The signature does not match the value under the named key (or is missing): forged or damaged."""


class MalformedEvent(ValueError):
    """A correctly signed value that is not a CloudEvent of the contract."""


class Outcome(str, enum.Enum):
    PROCESSED = "processed"  # apply() ran, and the id is recorded
    DUPLICATE = "duplicate"  # the id was processed before: apply() did not run


@dataclass(frozen=True)
class CloudEvent:
    """One event, parsed. `data` is the type's payload as sent (see the AsyncAPI document, /asyncapi.json)."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: Mapping[str, Any]
    specversion: str = "1.0"
    datacontenttype: str = "application/json"
    signature_key_id: str | None = field(default=None, compare=False)  # which key verified it

    @property
    def user_id(self) -> str:
        return str(self.data["user_id"])

    @property
    def amount(self) -> int:
        """In the currency's minor unit; for PAYMENT_REFUNDED, the refund's amount."""
        return int(self.data["amount"])

    @property
    def currency(self) -> str:
        return str(self.data["currency"])


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _header(headers: Headers, name: str) -> str | None:
    """The first header of that name, as text (None if absent or not UTF-8)."""
    if isinstance(headers, Mapping):
        return _text(headers.get(name))
    return next((_text(v) for k, v in headers if k == name), None)


class EventVerifier:
    """HMAC-SHA256 checks with several keys at once, picked by `signature_key_id` (key rotation)."""

    def __init__(self, keys: Mapping[str, bytes | str]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = {kid: k.encode() if isinstance(k, str) else bytes(k) for kid, k in keys.items()}

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, value: bytes, headers: Headers) -> str:
        """The id of the key that signed `value`; raises SignatureError. `value`: the bytes as received."""
        key_id = _header(headers, "signature_key_id")
        if key_id is None or key_id not in self._keys:
            raise UnknownSigningKey(f"no signing key with id {key_id!r} (known: {sorted(self._keys)})")
        given = _header(headers, "signature")
        expected = hmac.new(self._keys[key_id], value, hashlib.sha256).hexdigest()
        if given is None or not hmac.compare_digest(expected, given.lower()):
            raise InvalidSignature(f"signature does not match the value under key {key_id!r}")
        return key_id


def _require_str(document: Mapping[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"CloudEvent attribute {name!r} missing or not a string")
    return value


def parse_event(value: bytes | str, *, signature_key_id: str | None = None) -> CloudEvent:
    """The CloudEvent in a message value; MalformedEvent if it is not one of the contract's."""
    try:
        document = json.loads(value)
    except ValueError as exc:
        raise MalformedEvent(f"value is not JSON ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise MalformedEvent("value is not a JSON object")
    if document.get("specversion") != "1.0":
        raise MalformedEvent(f"specversion {document.get('specversion')!r}, expected '1.0'")
    event_type = _require_str(document, "type")
    if event_type not in EVENT_TYPES:
        # A new type this consumer does not know yet: surfaced, not silently skipped.
        raise MalformedEvent(f"unknown event type {event_type!r}")
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("user_id"), str):
        raise MalformedEvent("data missing, not an object, or without user_id")
    raw_time = _require_str(document, "time")
    try:
        when = datetime.fromisoformat(raw_time.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedEvent(f"time {raw_time!r} is not RFC 3339") from None
    return CloudEvent(
        id=_require_str(document, "id"),
        type=event_type,
        source=_require_str(document, "source"),
        subject=_require_str(document, "subject"),
        time=when,
        data=data,
        specversion="1.0",
        datacontenttype=str(document.get("datacontenttype") or "application/json"),
        signature_key_id=signature_key_id,
    )


class ProcessedEvents(Protocol):
    """Where a consumer remembers the event ids it processed."""

    def processing(self, event_id: str) -> AbstractContextManager[bool]:
        """Enter: True if `event_id` was processed already (the caller then skips it). A clean exit after
        False records it as processed, in the same transaction as the caller's writes where the store
        can; an exception records nothing."""
        ...


class InMemoryProcessedEvents:
    """The ids of this process's lifetime, the most recent `capacity` of them. For tests and idempotent
    handlers: it forgets on restart (see the module's docstring for a database-backed store)."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @contextmanager
    def processing(self, event_id: str) -> Iterator[bool]:
        if event_id in self:
            yield True
            return
        yield False
        with self._lock:
            self._ids[event_id] = None
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)


class _Message(Protocol):
    """What handle_message needs of a confluent_kafka.Message."""

    def value(self) -> bytes | None: ...

    def headers(self) -> list[tuple[str, bytes]] | None: ...


class EventConsumer:
    """Verify, parse and process each event id once. Thread-safe when `store` is."""

    def __init__(self, keys: Mapping[str, bytes | str] | EventVerifier, store: ProcessedEvents) -> None:
        self.verifier = keys if isinstance(keys, EventVerifier) else EventVerifier(keys)
        self.store = store

    def verify_and_parse(self, value: bytes | None, headers: Headers) -> CloudEvent:
        """The event in a message, once its signature is verified; raises SignatureError or MalformedEvent."""
        if value is None:
            raise InvalidSignature("message has no value")  # a tombstone: nothing we sign
        key_id = self.verifier.verify(value, headers)
        return parse_event(value, signature_key_id=key_id)

    def handle(self, value: bytes | None, headers: Headers, apply: Callable[[CloudEvent], Any]) -> Outcome:
        """Verify, parse, and `apply(event)` unless its id was processed; see the module's docstring."""
        event = self.verify_and_parse(value, headers)
        with self.store.processing(event.id) as done:
            if done:
                return Outcome.DUPLICATE
            apply(event)
        return Outcome.PROCESSED

    def handle_message(self, msg: _Message, apply: Callable[[CloudEvent], Any]) -> Outcome:
        """`handle` for a confluent_kafka.Message (check `msg.error()` before calling this)."""
        return self.handle(msg.value(), msg.headers() or [], apply)
