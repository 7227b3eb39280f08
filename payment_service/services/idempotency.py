"""Money-moving POSTs under an Idempotency-Key, in atomic phases (DESIGN.md rule 9).

Brandur Leach's "Implementing Stripe-like Idempotency Keys in Postgres": the key's row records how
far the request got (its recovery point), and each step between gateway calls is one transaction:

1. **RECORDED**: insert the key, do the request's own work (the fraud pre-check and the PENDING
   payment, the refund's reservation, the REQUESTED withdrawal) with the record claimed by this
   request (rule 7), and commit, all at once. A refusal (bad input) rolls it all back: nothing is
   stored, the key included, as Stripe does. The key's INSERT may ride with the request's first
   statement (MySQL): a key that exists then shows up there, as `KeyTaken`, and the request reads
   the key instead, as when the INSERT itself fails.
2. The gateway call, outside any transaction (rule 2).
3. **FINISHED**: apply the answer (the guarded move and its outbox row), release the claim and
   store the response on the key, in one transaction.

A top-up is therefore two transactions around one gateway call. A retry with the same key finds
the key: a finished one replays its response; an unfinished one whose holder is gone (its lock
expired or was released) is taken over, and the request resumes from its recovery point: the
record exists, so it is claimed again and the gateway is called again with the same gateway key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from ..domain import ids
from ..domain.errors import DomainError, IdempotencyKeyInUse, IdempotencyKeyReused, ValidationFailed
from ..domain.events import utcnow
from ..domain.payments import IdempotencyRecord
from ..gateways.base import GatewayUnavailableError
from .unit_of_work import AbstractUnitOfWork, KeyTaken, UowFactory

logger = logging.getLogger(__name__)

IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
STARTED, RECORDED, FINISHED = "STARTED", "RECORDED", "FINISHED"
# How long a request may hold its key (and the record it claimed) before another may take it over
# (a crashed holder). It must outlast the slowest honest request: a gateway call times out after
# GATEWAY_TIMEOUT_SECONDS.
LOCK_SECONDS = 60


def request_fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str | None) -> str:
    """The form of the key that is stored and looked up: its SHA-256, never the header as sent.

    A caller may put anything in a header, a card number included; a hash keeps it out of the
    database and is just as good a unique key.
    """
    if key is None or not (1 <= len(key) <= 255):
        raise ValidationFailed("Idempotency-Key header is required (1 to 255 characters)", field="Idempotency-Key")
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyedRequest:
    caller: str  # "user:<sub>" or "client:<id>"
    key: str  # as validate_key returned it
    method: str
    path: str
    fingerprint: str
    ttl_seconds: int
    lock_seconds: float = LOCK_SECONDS
    # How long the request owns the record it calls the gateway about. It must outlast the whole
    # gateway call (a Razorpay charge is several HTTP calls): a claim that lapsed mid-call would let
    # a retry or a sweep call again beside it, and Razorpay orders have no idempotency key.
    claim_seconds: float | None = None

    @property
    def claim_for(self) -> float:
        return max(self.lock_seconds, self.claim_seconds or 0.0)


@dataclass(frozen=True)
class Reply:
    status: int
    body: str  # JSON
    replayed: bool = False


R = TypeVar("R")


class Flow(Protocol[R]):
    """One kind of money-moving request: what phase 1 records, the gateway call, how its answer lands."""

    kind: str  # its lifecycle (domain/lifecycle.py)
    prefix: str  # of the id allocated for the record

    def create(self, uow: AbstractUnitOfWork, record_id: str, t: datetime, claimed_until: datetime) -> R:
        """Phase 1's own work, inside the key's transaction; the record is inserted claimed. A
        DomainError rolls back everything, the key included."""

    def resume(self, uow: AbstractUnitOfWork, record: R) -> None:
        """On a retry: load, in the same transaction, whatever `call` needs besides the record."""

    def needs_call(self, record: R) -> bool:
        """Whether the gateway still has to be asked (False: the record is settled or refused)."""

    def call(self, record: R) -> Any:
        """The gateway call. Raises GatewayUnavailableError when the outcome is unknown; a definite
        refusal is an answer like any other."""

    def apply(self, uow: AbstractUnitOfWork, record: R, answer: Any, t: datetime) -> R:
        """Phase 3: land the answer on the record (and release its claim) inside `uow`."""

    def unavailable(self, record: R) -> DomainError:
        """The 503 to answer when the gateway's outcome is unknown."""

    def retry_at(self, t: datetime) -> datetime:
        """When a sweep should look at a record whose gateway call went unanswered."""


Render = Callable[[Any], tuple[dict[str, Any], int]]


@dataclass
class _Started(Generic[R]):
    key: IdempotencyRecord
    record: R | None = None
    reply: Reply | None = None


def execute(
    flow: Flow[R], req: KeyedRequest, uow_factory: UowFactory, render: Render, now: Callable[[], datetime] = utcnow
) -> Reply:
    """Run one keyed request to its reply: a replay, or phases 1-3 (or 3 alone when resuming)."""
    started = _begin(flow, req, uow_factory, render, now)
    if started.reply is not None:
        return started.reply
    record = started.record
    assert record is not None
    try:
        answer = flow.call(record)
    except GatewayUnavailableError as exc:
        # The outcome is unknown: the record stays open for a retry with the same key (which
        # resumes it) or the sweep (which asks the gateway); neither waits for a lease to lapse.
        logger.warning(
            "gateway unavailable", extra={"kind": flow.kind, "record_id": _id(record), "error": str(exc)[:200]}
        )
        _let_go(flow, started.key, record, uow_factory, now(), error=f"gateway unavailable: {exc}"[:2000])
        raise flow.unavailable(record) from exc
    except BaseException:
        _let_go(flow, started.key, record, uow_factory, now(), error="the request failed during the gateway call")
        raise
    t = now()
    with uow_factory() as uow:
        after = flow.apply(uow, record, answer, t)
        reply = _finish(uow, started.key, render, after)
        uow.commit()
    return reply


def _id(record: Any) -> str:
    return str(record.id)


def _finish(uow: AbstractUnitOfWork, key: IdempotencyRecord, render: Render, record: Any) -> Reply:
    body, status = render(record)
    text = json.dumps(body)
    uow.idempotency.complete(key.caller, key.key, status, text, key.resource_id)
    return Reply(status, text)


def _let_go(
    flow: Flow[Any], key: IdempotencyRecord, record: Any, uow_factory: UowFactory, t: datetime, error: str
) -> None:
    with uow_factory() as uow:
        uow.records.release(flow.kind, _id(record), next_attempt_at=flow.retry_at(t), error=error)
        uow.idempotency.release(key.caller, key.key)
        uow.commit()


def _begin(
    flow: Flow[R], req: KeyedRequest, uow_factory: UowFactory, render: Render, now: Callable[[], datetime]
) -> _Started[R]:
    for _ in range(2):
        t = now()
        lock_until = t + timedelta(seconds=req.lock_seconds)
        claim_until = t + timedelta(seconds=req.claim_for)
        key = IdempotencyRecord(
            id=0, caller=req.caller, key=req.key, method=req.method, path=req.path, request_hash=req.fingerprint,
            status=IN_PROGRESS, created_at=t, expires_at=t + timedelta(seconds=req.ttl_seconds),
            resource_id=ids.new_id(flow.prefix), locked_until=lock_until, recovery_point=RECORDED,
        )
        try:
            with uow_factory() as uow:
                # Phase 1: the key and the request's own work commit together, or not at all. The
                # key's INSERT may ride with the next statement: a key that exists raises KeyTaken there.
                if uow.idempotency.insert(key):
                    assert key.resource_id is not None
                    try:
                        record = flow.create(uow, key.resource_id, t, claim_until)
                    except DomainError:
                        # Refused, perhaps before any statement (an open breaker): a retry of a request
                        # that finished gets its stored answer, not this refusal.
                        uow.idempotency.confirm()
                        raise
                    if not flow.needs_call(record):  # refused before any gateway call: one transaction
                        reply = _finish(uow, key, render, record)
                        uow.commit()
                        return _Started(key, record, reply)
                    uow.commit()
                    return _Started(key, record)
        except KeyTaken:
            pass  # another request holds or held this key: read it
        with uow_factory() as uow:
            existing = uow.idempotency.get(req.caller, req.key)
            if existing is None:
                continue  # purged in between: insert again
            if existing.request_hash != req.fingerprint:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request; use a new key for a new request"
                )
            if existing.status == COMPLETED:
                assert existing.response_body is not None and existing.response_status is not None
                return _Started(existing, reply=Reply(existing.response_status, existing.response_body, replayed=True))
            started = _resume(flow, uow, existing, render, now(), req)
            uow.commit()
            return started
    raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; retry later")


def _resume(
    flow: Flow[R], uow: AbstractUnitOfWork, key: IdempotencyRecord, render: Render, t: datetime, req: KeyedRequest
) -> _Started[R]:
    """A retry of a request that stopped half-way: take its key and its record over, in one transaction."""
    in_use = IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress; retry later")
    lock_until = t + timedelta(seconds=req.lock_seconds)
    claim_until = t + timedelta(seconds=req.claim_for)
    if not uow.idempotency.take_over(key.caller, key.key, t, lock_until):
        raise in_use
    assert key.resource_id is not None
    record = uow.records.get(flow.kind, key.resource_id)
    if record is None:
        # A key left at STARTED by an earlier version (phase 1 then took two transactions): the
        # record was never written, so this is the request's first real attempt.
        record = flow.create(uow, key.resource_id, t, claim_until)
    elif flow.needs_call(record):
        # The gateway call of the earlier attempt ended without an answer (or its process died):
        # call again, with the same gateway key, once we own the record. A sweep that owns it now
        # is asking the gateway itself: come back later.
        status = {record.status}
        if not uow.records.claim(flow.kind, key.resource_id, status, t, claim_until):
            raise in_use
        record = _claimed(record, claim_until)
        flow.resume(uow, record)
    if not flow.needs_call(record):
        return _Started(key, record, _finish(uow, key, render, record))
    return _Started(key, record)


def _claimed(record: R, until: datetime) -> R:
    return replace(record, claimed_until=until)  # type: ignore[type-var]
