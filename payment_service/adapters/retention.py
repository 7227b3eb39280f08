"""Retention: deletes rows past their keep-time, in small batches (expired idempotency keys; published outbox rows)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from .orm import IdempotencyKeyRow
from .outbox_store import purge_published

__all__ = ["purge_expired_idempotency_keys", "purge_published"]


def purge_expired_idempotency_keys(engine: Engine, now: datetime, *, batch: int = 1000) -> int:
    """Delete idempotency keys whose expiry (at least IDEMPOTENCY_KEY_TTL_SECONDS) is before `now`.
    Small batches, each its own transaction: the table stays writable meanwhile."""
    total = 0
    while True:
        with Session(engine) as session:
            ids = session.execute(
                select(IdempotencyKeyRow.id).where(IdempotencyKeyRow.expires_at < now).limit(batch)
            ).scalars().all()
            if not ids:
                return total
            session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.id.in_(ids)))
            session.commit()
        total += len(ids)


def purge_outbox(engine: Engine, retention_seconds: float) -> int:
    """Published outbox rows older than the retention (the relay never needs them again)."""
    return purge_published(engine, timedelta(seconds=retention_seconds))
