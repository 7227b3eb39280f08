"""`payment-service relay` as a real process: killed mid-way, and riding out a broker outage under live top-ups."""

from __future__ import annotations

import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from gateway_sandbox.server import free_port
from localparts.broker import TansuBroker
from localparts.topic_reader import Record, TopicReader
from payment_service.adapters.orm import OutboxEventRow
from payment_service.adapters.repository import SqlOutboxRepository
from payment_service.domain.events import Event, EventType
from tests.support.processes import VENV_BIN, ServiceProcess
from tests.support.waiting import wait_for as wait_until

from .conftest import REPO, start_api, user_headers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def engine(api_env: dict[str, str]) -> Iterator[Engine]:
    eng = create_engine(api_env["DATABASE_URL"])
    yield eng
    eng.dispose()


def start_relay(env: dict[str, str], log_dir: Path, name: str) -> ServiceProcess:
    return ServiceProcess([str(VENV_BIN / "payment-service"), "relay"], env, REPO, log_dir / f"relay-{name}.log")


def counts(engine: Engine) -> tuple[int, int]:
    """(rows, published rows)."""
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(OutboxEventRow)).scalar_one()
        done = conn.execute(
            select(func.count()).select_from(OutboxEventRow).where(OutboxEventRow.published_at.is_not(None))
        ).scalar_one()
    return int(total), int(done)



def topic_exists(bootstrap: str, topic: str) -> bool:
    # All topics, never one by name: Tansu auto-creates (with its own partition count) a topic it is asked about.
    from confluent_kafka.admin import AdminClient

    try:
        return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2).topics
    except Exception:  # noqa: BLE001 - the broker is not up yet
        return False


def payment_id(r: Record) -> str | None:
    return (r.json().get("data") or {}).get("payment_id")


def event_id(r: Record) -> str:
    return (r.header("event_id") or b"").decode()


def test_relay_killed_mid_way_loses_nothing_and_keeps_each_users_order(
    api_env: dict[str, str], engine: Engine, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Rows of the other tests of this module would be published too: count only ours.
    topic = f"payment.events.crash.{uuid.uuid4().hex[:8]}"
    users = [f"u_crash_{i}" for i in range(50)]
    events = []
    with Session(engine) as session:
        repo = SqlOutboxRepository(session)
        for i in range(3000):
            user = users[(i * 7) % 50]  # interleaved, so every batch holds many users
            pid = f"pay_crash_{i:05d}"
            event = Event(EventType.PAYMENT_CAPTURED, pid, user, {  # a whole one: the contract check reads it
                "payment_id": pid, "user_id": user, "amount": 100 + i, "currency": "INR", "gateway": "stripe",
                "gateway_payment_id": f"pi_crash_{i:05d}", "captured_at": "2026-11-21T10:00:00.000Z"})
            repo.add(event)
            events.append(event)
            if i % 250 == 249:
                session.commit()
        session.commit()
    with engine.connect() as conn:
        id_of = {eid: rid for eid, rid in conn.execute(select(OutboxEventRow.event_id, OutboxEventRow.id))}
    total, done = counts(engine)
    assert done == 0

    # Small rounds, so "mid-way" lasts long enough to be caught.
    env = {**api_env, "EVENTS_TOPIC": topic, "RELAY_BATCH_SIZE": "50", "RELAY_METRICS_PORT": "0"}
    first = start_relay(env, tmp_path, "first")
    try:
        wait_until(lambda: total // 4 <= counts(engine)[1] <= total * 3 // 4, 60, "the relay part-way", interval=0.005)
    finally:
        first.stop(signal.SIGKILL)
    _, published_at_kill = counts(engine)
    assert 0 < published_at_kill < total

    second = start_relay(env, tmp_path, "second")
    try:
        wait_until(lambda: counts(engine)[1] == total, 120, "every row published after the restart")
    finally:
        assert second.stop(signal.SIGTERM) == 0, second.output()[-3000:]
    assert "relay stopped" in second.output()

    ours = {e.id for e in events}
    with TopicReader(kafka_bootstrap, topic) as reader:
        reader.wait_for(lambda r: event_id(r) in ours, count=len(ours), timeout=60)
        records = [r for r in reader.drain(quiet=1.5) if event_id(r) in ours]

    assert {event_id(r) for r in records} == ours  # every event arrived
    first_value: dict[str, bytes | None] = {}
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        eid = event_id(r)
        if eid in first_value:
            assert first_value[eid] == r.value, "a duplicate with another value"
            continue
        first_value[eid] = r.value
        by_key[r.key].append(id_of[eid])
    assert len(by_key) == 50
    for key, ids in by_key.items():
        assert ids == sorted(ids), f"{key!r}: first arrivals out of id order"
    duplicates = len(records) - len(ours)
    print(f"published before the kill: {published_at_kill}; duplicates after the restart: {duplicates}")


def test_topups_keep_working_through_a_broker_outage_and_every_capture_arrives(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    with TansuBroker() as broker:
        topic = f"payment.events.outage.{uuid.uuid4().hex[:8]}"
        env = {
            **api_env,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "EVENTS_TOPIC": topic,
            "RELAY_METRICS_PORT": str(free_port()),
        }
        api, url = start_api(env, tmp_path)
        relay = start_relay(env, tmp_path, "outage")
        try:
            def topup(user: str) -> str:
                resp = requests.post(
                    f"{url}/payments/topup",
                    json={"amount": 50000, "currency": "INR", "gateway": "stripe", "token": "pm_card_visa",
                          "return_url": "https://wallet.example/after-3ds",
                          "device": {"id": "device-outage", "ip": "203.0.113.9"}},
                    headers=user_headers(user, uuid.uuid4().hex),
                    timeout=30,
                )
                assert resp.status_code == 201, resp.text
                assert resp.json()["status"] == "CAPTURED"
                return str(resp.json()["id"])

            before = [topup(f"u_out_{i % 3}") for i in range(3)]
            wait_until(lambda: topic_exists(broker.bootstrap, topic), 30, "the relay to create the topic")
            with TopicReader(broker.bootstrap, topic) as reader:
                reader.wait_for(lambda r: payment_id(r) in before, count=3, timeout=30)

            broker.halt()
            during: list[str] = []
            outage_end = time.monotonic() + 30
            while time.monotonic() < outage_end:
                during.append(topup(f"u_out_{len(during) % 5}"))  # answers 201: the event waits in the outbox
                time.sleep(0.3)
            # The API never talks to Kafka (nor loads its client): a broker outage keeps it in the load balancer.
            assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
            metrics = requests.get(f"http://127.0.0.1:{env['RELAY_METRICS_PORT']}/metrics", timeout=10).text
            backlog = next(float(ln.split()[1]) for ln in metrics.splitlines() if ln.startswith("outbox_backlog "))
            assert backlog >= len(during)
            assert "relay_is_leader 1.0" in metrics
            broker.start()  # empty: the relay re-creates the topic and sends the backlog

            wanted = set(during)
            wait_until(lambda: topic_exists(broker.bootstrap, topic), 60, "the relay to re-create the topic")
            with TopicReader(broker.bootstrap, topic) as reader:
                got = reader.wait_for(
                    lambda r: r.header("event_type") == b"PAYMENT_CAPTURED" and payment_id(r) in wanted,
                    count=len(wanted),
                    timeout=60,
                )
            assert {payment_id(r) for r in got} == wanted
            print(f"top-ups during the 30 s outage: {len(during)}, every capture published after it")
        finally:
            relay_code = relay.stop()
            api.stop()
        assert relay_code == 0, relay.output()[-3000:]
