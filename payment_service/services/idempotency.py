"""Idempotency-Key handling for POSTs that move money (CONTRACT.md "Idempotency").

The record is claimed in its own short transaction before any work starts, with the id of the
resource the request will create allocated up front: a retry after a crash finds the same
resource id and resumes it instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..domain import ids
from ..domain.errors import IdempotencyKeyInUse, IdempotencyKeyReused, ValidationFailed
from ..domain.events import utcnow
from ..domain.payments import IdempotencyRecord
from .unit_of_work import AbstractUnitOfWork

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
# How long a request may hold its key before another may take it over (a crashed holder). It must
# outlast the slowest honest request (a gateway call times out after GATEWAY_TIMEOUT_SECONDS).
LOCK_SECONDS = 60


def request_fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str | None) -> str:
    if key is None or not (1 <= len(key) <= 255):
        raise ValidationFailed("Idempotency-Key header is required (1 to 255 characters)", field="Idempotency-Key")
    return key


@dataclass
class Claim:
    record: IdempotencyRecord
    replay: bool  # True: a completed response exists, send it again
    resumed: bool = False  # True: an earlier attempt with this key may have left work to resume


def claim(
    uow_factory: Callable[[], AbstractUnitOfWork],
    caller: str,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    resource_prefix: str,
    ttl_seconds: int,
    now: Callable[[], datetime] = utcnow,
    lock_seconds: float = LOCK_SECONDS,
) -> Claim:
    for _ in range(2):
        t = now()
        record = IdempotencyRecord(
            id=0,
            caller=caller,
            key=key,
            method=method,
            path=path,
            request_hash=fingerprint,
            status=IN_PROGRESS,
            created_at=t,
            expires_at=t + timedelta(seconds=ttl_seconds),
            resource_id=ids.new_id(resource_prefix),
            locked_until=t + timedelta(seconds=lock_seconds),
        )
        with uow_factory() as uow:
            inserted = uow.idempotency.insert(record)
            uow.commit()
        if inserted:
            return Claim(record, replay=False)
        with uow_factory() as uow:
            existing = uow.idempotency.get(caller, key)
        if existing is None:
            continue  # purged in between: try to insert again
        if existing.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request; use a new key for a new request"
            )
        if existing.status == COMPLETED:
            return Claim(existing, replay=True)
        t = now()
        with uow_factory() as uow:
            taken = uow.idempotency.take_over(existing.id, t, t + timedelta(seconds=lock_seconds))
            uow.commit()
        if not taken:
            raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; retry later")
        return Claim(existing, replay=False, resumed=True)
    raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; retry later")


def complete(uow_factory: Callable[[], AbstractUnitOfWork], record: IdempotencyRecord, status: int, body: str) -> None:
    with uow_factory() as uow:
        uow.idempotency.complete(record.id, status, body, record.resource_id)
        uow.commit()


def release(uow_factory: Callable[[], AbstractUnitOfWork], record: IdempotencyRecord, *, forget: bool) -> None:
    """Give the key back: `forget` deletes it (the request never started), else a retry resumes it."""
    with uow_factory() as uow:
        if forget:
            uow.idempotency.delete(record.id)
        else:
            uow.idempotency.release(record.id)
        uow.commit()
