"""Helpers of the relay's integration tests: outbox rows written and counted, relays run in threads, order checked.

Rows are written the way the services write them (SqlOutboxRepository), one transaction per call.
The fixtures (`engine`, the autouse `empty_outbox`) are in conftest.py beside this module.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from config import Settings, load_settings
from localparts.topic_reader import Record
from payment_service.adapters.orm import OutboxEventRow
from payment_service.adapters.repository import SqlOutboxRepository
from payment_service.bootstrap import build_relay
from payment_service.domain.events import Event, EventType
from payment_service.worker.relay import OutboxRelay

_seq = itertools.count()

# The contract tests' signing keys (id, secret): the old one, and the one it is rotated to.
OLD = ("2026-08", "old-event-signing-key")
NEW = ("2026-11", "new-event-signing-key")


# --- settings -------------------------------------------------------------------------------


def relay_settings(engine: Engine, bootstrap: str, **kw: Any) -> Settings:
    return load_settings(
        env={},
        DATABASE_URL=engine.url.render_as_string(hide_password=False),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        EVENTS_TOPIC=f"payment.events.{uuid.uuid4().hex[:10]}",
        EVENTS_TOPIC_PARTITIONS=3,
        EVENT_SIGNING_KEY="test-signing-key",
        EVENT_SIGNING_KEY_ID="test-1",
        **kw,
    )


def settings_for(engine: Engine, bootstrap: str, topic: str, key: tuple[str, str]) -> Settings:
    """Settings for a topic of the test's choosing, signing with `key` (OLD or NEW)."""
    return load_settings(
        env={}, DATABASE_URL=engine.url.render_as_string(hide_password=False), KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        EVENTS_TOPIC=topic, EVENTS_TOPIC_PARTITIONS=3, EVENT_SIGNING_KEY=key[1], EVENT_SIGNING_KEY_ID=key[0],
    )


# --- events and outbox rows -----------------------------------------------------------------


def captured(user: str, n: int | None = None) -> Event:
    n = next(_seq) if n is None else n
    pid = f"pay_{uuid.uuid4().hex[:20]}"
    return Event(
        EventType.PAYMENT_CAPTURED,
        pid,
        user,
        {"payment_id": pid, "user_id": user, "amount": 1000 + n, "currency": "INR", "gateway": "stripe",
         "gateway_payment_id": f"pi_{n}", "captured_at": "2026-11-21T10:00:00.000Z"},
    )


def fresh(event: Event, user: str) -> Event:
    """The same event for another user, with an id of its own."""
    return Event(event.type, event.subject, user, {**event.data, "user_id": user})


def write(engine: Engine, *events: Event) -> None:
    """One transaction, as a service's unit of work commits it."""
    with Session(engine) as session:
        repo = SqlOutboxRepository(session)
        for e in events:
            repo.add(e)
        session.commit()


def outbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(OutboxEventRow.__table__).order_by(OutboxEventRow.id)))


def unpublished(engine: Engine) -> int:
    """Rows still to send: neither published nor quarantined."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(OutboxEventRow).where(
                    OutboxEventRow.published_at.is_(None), OutboxEventRow.quarantined_at.is_(None)
                )
            ).scalar_one()
        )


def not_published(engine: Engine) -> int:
    """Rows not published, quarantined ones included (a quarantined row never reaches 0 here)."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(OutboxEventRow)
                                .where(OutboxEventRow.published_at.is_(None))).scalar_one())


# --- the broker -----------------------------------------------------------------------------


def topic_exists(bootstrap: str, topic: str) -> bool:
    # Listing all topics, never one by name: Tansu auto-creates a topic it is asked about.
    from confluent_kafka.admin import AdminClient

    try:
        return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2).topics
    except Exception:  # noqa: BLE001 - broker not up yet
        return False


# --- relays ---------------------------------------------------------------------------------


def make_relay(engine: Engine, settings: Settings, **kw: Any) -> OutboxRelay:
    kw.setdefault("lease_ttl", 2.0)
    kw.setdefault("delivery_timeout", 2.0)
    kw.setdefault("max_backoff", 1.0)
    return build_relay(settings, engine, **kw)


@contextmanager
def running(relay: OutboxRelay) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=relay.run, name=f"relay-{relay.holder}", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        relay.stop()
        thread.join(30)
        assert not thread.is_alive(), "relay did not stop"


@contextmanager
def relay_running(engine: Engine, settings: Settings) -> Iterator[OutboxRelay]:
    """A relay (make_relay's short timings) running in a thread for the duration of the block."""
    relay = make_relay(engine, settings)
    with running(relay):
        yield relay


# --- what arrived ---------------------------------------------------------------------------


def first_arrivals(records: list[Record]) -> dict[bytes, list[str]]:
    """Per key, the event ids in order of first arrival (a key lives on one partition, so offset order)."""
    out: dict[bytes, list[str]] = defaultdict(list)
    seen: dict[str, bytes | None] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        eid = (r.header("event_id") or b"").decode()
        if eid in seen:
            assert seen[eid] == r.value, f"duplicate of {eid} with another value"
            continue
        seen[eid] = r.value
        assert r.key is not None
        out[r.key].append(eid)
    return out


def assert_in_id_order(records: list[Record], rows: list[Any]) -> None:
    id_of = {row.event_id: row.id for row in rows}
    for key, eids in first_arrivals(records).items():
        ids = [id_of[e] for e in eids]
        assert ids == sorted(ids), f"events of {key!r} arrived out of id order"
