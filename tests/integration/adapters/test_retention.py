"""adapters/retention.py on MariaDB: expired idempotency keys go in small batches, live ones stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, insert, select

from payment_service.adapters import retention
from payment_service.adapters.orm import IdempotencyKeyRow
from payment_service.domain.events import utcnow

pytestmark = pytest.mark.integration


def _keys(engine: Engine, n: int, expires_in: timedelta, label: str) -> None:
    now = utcnow()
    rows = [
        {"caller": f"user:u_{label}", "key": f"{label}-{i}", "method": "POST", "path": "/payments/topup",
         "request_hash": "0" * 64, "status": "COMPLETED", "created_at": now, "expires_at": now + expires_in,
         "recovery_point": "FINISHED"}
        for i in range(n)
    ]
    with engine.begin() as conn:
        conn.execute(insert(IdempotencyKeyRow), rows)


def _count(engine: Engine, label: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(IdempotencyKeyRow).where(IdempotencyKeyRow.caller == f"user:u_{label}")
        ).scalar_one())


def test_expired_keys_are_purged_in_batches_and_live_ones_kept(engine: Engine, empty_queues: None) -> None:
    _keys(engine, 25, timedelta(hours=-1), "old")
    _keys(engine, 5, timedelta(hours=1), "live")
    purged = retention.purge_expired_idempotency_keys(engine, utcnow(), batch=7)  # 4 batches: 7+7+7+4
    assert purged == 25
    assert _count(engine, "old") == 0
    assert _count(engine, "live") == 5
    assert retention.purge_expired_idempotency_keys(engine, utcnow(), batch=7) == 0
