"""The relay's parts without a database server or a broker: what the API process loads (in a process of its
own), the store's SQL on SQLite (what `payment-service dev` runs). The wake-up schedule is in
tests/unit/test_relay_wakeup.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, update

from payment_service.adapters import migrate
from payment_service.adapters.orm import OutboxEventRow, RelayLeaseRow
from payment_service.adapters.outbox_store import LeaderLease, SqlOutboxStore

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def empty_outbox() -> None:
    """Nothing to empty: these tests need no MariaDB, which the package's own `empty_outbox` would start."""


def test_the_api_process_loads_neither_kafka_nor_the_relay(tmp_path: Path) -> None:
    # A process of its own: this one has imported the relay through other tests.
    url = f"sqlite:///{tmp_path}/api.sqlite3"
    code = f"""
import json, sys
from payment_service.adapters import migrate
migrate.upgrade({url!r})
import wsgi
client = wsgi.app.test_client()
statuses = [client.get(path).status_code for path in ("/healthz", "/readyz", "/metrics")]
metrics = client.get("/metrics").get_data(as_text=True)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("confluent_kafka", "pymysqlreplication")
                or m.startswith("payment_service.worker"))
print(json.dumps({{"statuses": statuses, "loaded": loaded, "backlog": "outbox_backlog 0.0" in metrics}}))
"""
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["statuses"] == [200, 200, 200]
    assert result["backlog"]  # the outbox collector is there, read from the database


@pytest.fixture
def store(tmp_path: Path) -> SqlOutboxStore:
    url = f"sqlite:///{tmp_path}/relay.sqlite3"
    migrate.upgrade(url)
    engine = create_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(OutboxEventRow), [
            {"event_id": f"evt_{i}", "event_type": "PAYMENT_CAPTURED", "subject": f"pay_{i}", "user_id": "u_1",
             "payload": json.dumps({"id": f"evt_{i}"}), "created_at": now} for i in range(1, 11)])
    return SqlOutboxStore(engine)


def test_store_claims_marks_in_ranges_once_and_skips_rows_being_marked(store: SqlOutboxStore) -> None:
    rows = store.claim(limit=4)
    assert [r.id for r in rows] == [1, 2, 3, 4] and rows[0].event_id == "evt_1" and rows[0].user_id == "u_1"
    assert [r.id for r in store.claim(limit=3, after=4)] == [5, 6, 7]
    assert [r.id for r in store.claim(limit=10, skip=[1, 2, 3, 4, 6])] == [5, 7, 8, 9, 10]
    assert store.mark_published([1, 2, 3, 6]) == 4
    assert store.mark_published([1, 2, 3, 6]) == 0  # marked once: a second marking changes nothing
    assert [r.id for r in store.claim(limit=10)] == [4, 5, 7, 8, 9, 10]
    with store.engine.connect() as conn:
        published = dict(conn.execute(select(OutboxEventRow.id, OutboxEventRow.published_at)).all())
    assert {i for i, at in published.items() if at is not None} == {1, 2, 3, 6}
    store.close()


def test_lease_one_holder_at_a_time_and_fencing_counts_the_changes(store: SqlOutboxStore) -> None:
    first, second = LeaderLease(store, "relay-1", ttl=5.0), LeaderLease(store, "relay-2", ttl=5.0)
    assert first.renew() and first.fencing == 1
    assert not second.renew() and not second.held
    assert first.renew() and first.fencing == 1  # renewing is not a change of holder
    store.release_lease("relay-1")
    assert second.renew() and second.fencing == 2
    with store.engine.begin() as conn:  # relay-2's lease runs out
        conn.execute(update(RelayLeaseRow).values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    first.held = False
    assert first.renew() and first.fencing == 3
    store.close()
