"""The consumer helper (payment_service/events/consumer.py) on messages signed as the relay signs them.

The same cases run against real messages from the relay through the broker in
tests/integration/relay/test_events_contract.py.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from payment_service.events import asyncapi_document
from payment_service.events.consumer import (
    CloudEvent,
    EventConsumer,
    EventVerifier,
    InMemoryProcessedEvents,
    InvalidSignature,
    MalformedEvent,
    Outcome,
    UnknownSigningKey,
    parse_event,
)

OLD_KEY, NEW_KEY = b"old-signing-key", b"new-signing-key"


def message(etype: str = "PAYMENT_CAPTURED", key: bytes = OLD_KEY, key_id: str = "2026-08",
            **data: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A (value, headers) pair from the AsyncAPI document's example of `etype`, signed with `key`."""
    example = asyncapi_document()["components"]["messages"][etype]["examples"][0]
    doc = example["payload"]
    doc["data"].update(data)
    value = json.dumps(doc, separators=(",", ":")).encode()
    headers = [("event_id", doc["id"].encode()), ("event_type", etype.encode()),
               ("signature", hmac.new(key, value, hashlib.sha256).hexdigest().encode()),
               ("signature_key_id", key_id.encode()), ("content-type", b"application/cloudevents+json")]
    return value, headers


class Wallet:
    def __init__(self) -> None:
        self.applied: list[CloudEvent] = []

    def apply(self, event: CloudEvent) -> None:
        self.applied.append(event)


@pytest.fixture
def wallet() -> Wallet:
    return Wallet()


def test_a_good_message_is_parsed_and_applied(wallet: Wallet) -> None:
    consumer = EventConsumer({"2026-08": OLD_KEY}, InMemoryProcessedEvents())
    value, headers = message()
    assert consumer.handle(value, headers, wallet.apply) is Outcome.PROCESSED
    (event,) = wallet.applied
    assert event.type == "PAYMENT_CAPTURED" and event.id.startswith("evt_") and event.subject.startswith("pay_")
    assert event.time == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    assert (event.user_id, event.amount, event.currency) == ("u_1", 50000, "INR")
    assert event.signature_key_id == "2026-08" and event.source == "payment-service"


def test_every_type_of_the_document_parses() -> None:
    verifier = EventVerifier({"2026-08": OLD_KEY})
    for etype in asyncapi_document()["components"]["messages"]:
        value, headers = message(etype)
        assert parse_event(value, signature_key_id=verifier.verify(value, headers)).type == etype


def test_a_forged_message_is_refused_and_not_applied(wallet: Wallet) -> None:
    store = InMemoryProcessedEvents()
    consumer = EventConsumer({"2026-08": OLD_KEY}, store)
    value, headers = message()
    tampered = value.replace(b'"amount":50000', b'"amount":99999')
    with pytest.raises(InvalidSignature):
        consumer.handle(tampered, headers, wallet.apply)
    # Signed with another key, under a key id we trust.
    forged, forged_headers = message(key=b"attacker-key", amount=99999)
    with pytest.raises(InvalidSignature):
        consumer.handle(forged, forged_headers, wallet.apply)
    with pytest.raises(InvalidSignature):
        consumer.handle(value, [h for h in headers if h[0] != "signature"], wallet.apply)
    with pytest.raises(InvalidSignature):
        consumer.handle(None, headers, wallet.apply)
    assert wallet.applied == [] and len(store) == 0
    # The genuine one still goes through: a forged copy did not mark its id.
    assert consumer.handle(value, headers, wallet.apply) is Outcome.PROCESSED


def test_rotated_keys_are_picked_by_key_id(wallet: Wallet) -> None:
    consumer = EventConsumer({"2026-08": OLD_KEY, "2026-11": NEW_KEY}, InMemoryProcessedEvents())
    old = message("PAYMENT_CAPTURED", OLD_KEY, "2026-08")
    new = message("PAYMENT_REFUNDED", NEW_KEY, "2026-11")
    assert consumer.handle(*old, wallet.apply) is Outcome.PROCESSED
    assert consumer.handle(*new, wallet.apply) is Outcome.PROCESSED
    assert [e.signature_key_id for e in wallet.applied] == ["2026-08", "2026-11"]
    # The new key under the old id is a bad signature, not a rotation.
    with pytest.raises(InvalidSignature):
        consumer.handle(*message("PAYMENT_FAILED", NEW_KEY, "2026-08"), wallet.apply)
    # A consumer that was not given the new key stops: a configuration problem, not a forgery.
    stale = EventConsumer({"2026-08": OLD_KEY}, InMemoryProcessedEvents())
    with pytest.raises(UnknownSigningKey, match="2026-11"):
        stale.handle(*new, wallet.apply)
    with pytest.raises(UnknownSigningKey):
        stale.handle(old[0], [h for h in old[1] if h[0] != "signature_key_id"], wallet.apply)
    # Headers as a mapping work the same (some clients give a dict).
    assert stale.verifier.verify(old[0], dict(old[1])) == "2026-08"


def test_a_redelivery_is_applied_once(wallet: Wallet) -> None:
    consumer = EventConsumer({"2026-08": OLD_KEY}, InMemoryProcessedEvents())
    value, headers = message()
    assert consumer.handle(value, headers, wallet.apply) is Outcome.PROCESSED
    assert consumer.handle(value, headers, wallet.apply) is Outcome.DUPLICATE
    assert len(wallet.applied) == 1


def test_a_failed_apply_is_not_recorded_so_the_redelivery_applies_it(wallet: Wallet) -> None:
    consumer = EventConsumer({"2026-08": OLD_KEY}, InMemoryProcessedEvents())
    value, headers = message()

    def broken(_event: CloudEvent) -> None:
        raise RuntimeError("wallet database away")

    with pytest.raises(RuntimeError):
        consumer.handle(value, headers, broken)
    assert consumer.handle(value, headers, wallet.apply) is Outcome.PROCESSED
    assert len(wallet.applied) == 1


def test_a_signed_value_that_is_no_cloudevent_is_malformed(wallet: Wallet) -> None:
    consumer = EventConsumer({"k": OLD_KEY}, InMemoryProcessedEvents())

    def signed(doc: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
        value = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return value, [("signature", hmac.new(OLD_KEY, value, hashlib.sha256).hexdigest().encode()),
                       ("signature_key_id", b"k")]

    good = json.loads(message()[0])
    for bad in (b"{not json", [1, 2], {**good, "specversion": "0.3"}, {**good, "type": "PAYMENT_LOST"},
                {**good, "data": None}, {**good, "time": "yesterday"}, {k: v for k, v in good.items() if k != "id"}):
        with pytest.raises(MalformedEvent):
            consumer.handle(*signed(bad), wallet.apply)
    assert wallet.applied == []


def test_the_in_memory_store_keeps_the_most_recent_ids() -> None:
    store = InMemoryProcessedEvents(capacity=2)
    for eid in ("evt_1", "evt_2", "evt_3"):
        with store.processing(eid) as done:
            assert not done
    assert "evt_1" not in store and "evt_2" in store and "evt_3" in store


def test_a_custom_store_plugs_in(wallet: Wallet) -> None:
    class Recording:
        """What a database-backed store does, in memory: look up, yield, record on a clean exit."""

        def __init__(self) -> None:
            self.rows: set[str] = set()
            self.rolled_back = 0

        @contextmanager
        def processing(self, event_id: str):  # type: ignore[no-untyped-def]
            try:
                yield event_id in self.rows
            except BaseException:
                self.rolled_back += 1
                raise
            self.rows.add(event_id)

    store = Recording()
    consumer = EventConsumer(EventVerifier({"2026-08": OLD_KEY}), store)
    value, headers = message()
    assert consumer.handle(value, headers, wallet.apply) is Outcome.PROCESSED
    assert consumer.handle(value, headers, wallet.apply) is Outcome.DUPLICATE
    with pytest.raises(ZeroDivisionError):
        consumer.handle(*message("PAYMENT_FAILED"), lambda e: 1 / 0)
    assert len(store.rows) == 1 and store.rolled_back == 1


def test_the_helper_can_be_vendored_alone() -> None:
    """Standard library only, nothing from the service: a wallet service copies the one file."""
    source = Path(__file__).resolve().parents[2] / "payment_service" / "events" / "consumer.py"
    tree = ast.parse(source.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative import"
            modules.add((node.module or "").split(".")[0])
    import sys

    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules
