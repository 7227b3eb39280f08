"""The audit trail's rules: who is acting (a context), what a row holds, and its HMAC chain.

Standard library only. A row is written by whatever changes something: the API for every mutation
it answers (accepted or refused), the record repository for every status change of a payment,
refund or withdrawal (in the same transaction), the CLI for client and key operations. Who acts is
taken from `current()`: the API sets it per request (`acting_as`), the webhook applier per event
(the gateway), a sweep per record (the job's name). Nothing in a row is a secret: ids, statuses,
codes; never a request body, a card number, an account number or a key (only a key's display prefix).

The chain: rows are sealed in `seq` order, each `hash = HMAC-SHA256(AUDIT_HMAC_KEY, prev_hash "\\n"
canonical(row))`, so changing, removing or reordering a sealed row breaks every hash after it
without the key; `verify_chain` names the first row that does not fit.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .cards import mask_card_numbers

GENESIS_HASH = "0" * 64

# Outcomes.
SUCCEEDED = "succeeded"  # a mutation answered 2xx (or 402: the payment was recorded as FAILED), a status moved
REJECTED = "rejected"  # refused before anything changed: 401, 403, 409, 422
FAILED = "failed"  # the service could not do it: 5xx


@dataclass(frozen=True)
class Actor:
    """`kind` is user, client, gateway, job, cli or system; `id` the user id, client id, gateway name,
    job name or operator name."""

    kind: str
    id: str
    key_prefix: str | None = None  # a service client's API key display prefix

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


SYSTEM = Actor("system", "service")
ANONYMOUS = Actor("anonymous", "-")


@dataclass
class ApiCall:
    """The API call a request context belongs to. Its row is written by whichever comes first: the
    transaction that stores the call's answer (a keyed mutation's last phase: no transaction of its
    own), else the API after the answer. `recorded_status` says which status was written already."""

    method: str
    route: str  # the URL rule: "POST /payments/<payment_id>/refunds" is the row's action
    path: str
    recorded_status: int | None = None

    @property
    def action(self) -> str:
        return f"{self.method} {self.route}"


@dataclass(frozen=True)
class AuditContext:
    actor: Actor
    request_id: str | None = None  # the API request's id, or the webhook's event id
    source: str | None = None  # the caller's network address
    call: ApiCall | None = None  # set for API requests


_current: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


def current() -> AuditContext:
    """Who is acting here; `system` when no one said (a state change outside any request, job or webhook)."""
    return _current.get() or AuditContext(SYSTEM)


@contextmanager
def acting_as(actor: Actor, request_id: str | None = None, source: str | None = None) -> Iterator[AuditContext]:
    ctx = AuditContext(actor, request_id, source)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def set_context(ctx: AuditContext | None) -> contextvars.Token[AuditContext | None]:
    """For a request's before/teardown hooks, which cannot hold a `with` block."""
    return _current.set(ctx)


def reset_context(token: contextvars.Token[AuditContext | None]) -> None:
    _current.reset(token)


# Column widths (adapters/orm.py): values are cut to fit, never refused.
_LIMITS = {"actor": 100, "action": 64, "resource_type": 32, "resource_id": 64, "request_id": 128,
           "source": 45, "summary": 255, "actor_key_prefix": 16}


@dataclass
class AuditEvent:
    occurred_at: datetime
    actor: str
    action: str
    outcome: str
    summary: str
    actor_key_prefix: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    source: str | None = None
    id: int | None = None
    seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None

    def cleaned(self) -> AuditEvent:
        """The row as stored: every text field masked for card numbers (a path or an id might carry one)
        and cut to its column."""
        changes: dict[str, Any] = {}
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, str):
                changes[name] = mask_card_numbers(value)[:limit]
        return replace(self, **changes)


def event(
    at: datetime, action: str, outcome: str, summary: str, *, resource_type: str | None = None,
    resource_id: str | None = None, http_status: int | None = None, ctx: AuditContext | None = None,
) -> AuditEvent:
    """A row for what the current actor (or `ctx`) did."""
    ctx = ctx or current()
    return AuditEvent(
        occurred_at=at, actor=str(ctx.actor), actor_key_prefix=ctx.actor.key_prefix, action=action,
        outcome=outcome, summary=summary, resource_type=resource_type, resource_id=resource_id,
        http_status=http_status, request_id=ctx.request_id, source=ctx.source,
    ).cleaned()


_ID_TYPES = {"pay": "payment", "re": "refund", "wd": "withdrawal", "pm": "payment_method", "cli": "api_client"}


def resource_type_of(resource_id: str | None) -> str | None:
    """What an id of ours names, by its prefix (`pay_`, `re_`, `wd_`, `pm_`, `cli_`)."""
    return None if resource_id is None else _ID_TYPES.get(resource_id.partition("_")[0])


def outcome_of(status: int) -> str:
    if status < 400 or status == 402:  # 402: the payment was recorded, as FAILED
        return SUCCEEDED
    return REJECTED if status < 500 else FAILED


def api_call(at: datetime, status: int, resource_id: str | None, detail: str = "",
             ctx: AuditContext | None = None) -> AuditEvent | None:
    """The row of the current request's API call, answered `status`; None outside a request."""
    ctx = ctx or current()
    if ctx.call is None:
        return None
    summary = f"{status} {ctx.call.method} {ctx.call.path}" + (f" {detail}" if detail else "")
    return event(at, ctx.call.action, outcome_of(status), summary, resource_type=resource_type_of(resource_id),
                 resource_id=resource_id, http_status=status, ctx=ctx)


def state_change(kind: str, record_id: str, target: str, at: datetime, changes: Mapping[str, Any]) -> AuditEvent:
    """The row for a status change (`RecordRepository.move`): `payment.captured`, `withdrawal.settled`."""
    detail = f"{kind} {record_id} -> {target}"
    code = changes.get("failure_code")
    if isinstance(code, str):
        detail += f" ({code})"
    return event(at, f"{kind}.{target.lower()}", SUCCEEDED, detail, resource_type=kind, resource_id=record_id)


# --- the chain ------------------------------------------------------------------------------

_CHAINED = ("id", "occurred_at", "actor", "actor_key_prefix", "action", "resource_type", "resource_id", "outcome",
            "http_status", "request_id", "source", "summary", "seq")


def canonical(row: AuditEvent) -> bytes:
    """The bytes a row's hash covers: every field but the hashes, in a fixed order, as a JSON array."""
    values: list[Any] = []
    for name in _CHAINED:
        v = getattr(row, name)
        if isinstance(v, datetime):
            v = v.isoformat(timespec="microseconds")
        values.append(v)
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(key: bytes, prev_hash: str, row: AuditEvent) -> str:
    mac = hmac.new(key, prev_hash.encode() + b"\n", hashlib.sha256)
    mac.update(canonical(row))
    return mac.hexdigest()


def head_mac(key: bytes, last_seq: int, last_hash: str, anchor_seq: int, anchor_hash: str) -> str:
    msg = f"audit_chain|{last_seq}|{last_hash}|{anchor_seq}|{anchor_hash}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


@dataclass
class ChainHead:
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    anchor_seq: int = 0
    anchor_hash: str = GENESIS_HASH
    mac: str | None = None

    def sign(self, key: bytes) -> ChainHead:
        self.mac = head_mac(key, self.last_seq, self.last_hash, self.anchor_seq, self.anchor_hash)
        return self

    def intact(self, key: bytes) -> bool:
        if self.mac is None:  # as the migration made it: nothing sealed yet, nothing purged
            return (self.last_seq, self.anchor_seq, self.last_hash, self.anchor_hash) == (
                0, 0, GENESIS_HASH, GENESIS_HASH)
        expected = head_mac(key, self.last_seq, self.last_hash, self.anchor_seq, self.anchor_hash)
        return hmac.compare_digest(expected, self.mac)


class ChainHeadTampered(Exception):
    """The head's MAC does not match: sealing stops (extending it would launder the change) until an
    operator looks (`payment-service audit verify`)."""


def seal(key: bytes, head: ChainHead, rows: Iterable[AuditEvent]) -> list[AuditEvent]:
    """Chain `rows` (unsealed, in the order given) after `head`; moves the head. Returns them sealed."""
    rows = list(rows)
    if not rows:
        return []
    if not head.intact(key):
        raise ChainHeadTampered("the audit chain's head (audit_chain) does not match its MAC")
    sealed = []
    for row in rows:
        row.seq = head.last_seq + 1
        row.prev_hash = head.last_hash
        row.hash = chain_hash(key, row.prev_hash, row)
        head.last_seq, head.last_hash = row.seq, row.hash
        sealed.append(row)
    head.sign(key)
    return sealed


@dataclass
class VerifyReport:
    ok: bool
    checked: int = 0
    problem: str | None = None  # the first row that does not fit, and how
    row_id: int | None = None
    seq: int | None = None
    unsealed: int = 0


def verify_chain(key: bytes, head: ChainHead, rows: Iterable[AuditEvent]) -> VerifyReport:
    """Walk sealed rows in `seq` order from the anchor; the first row changed, missing or out of place
    is named. `rows` must be the sealed rows ordered by seq."""
    if not head.intact(key):
        return VerifyReport(False, problem="the chain head (audit_chain) was changed: its MAC does not match")
    expected_seq, prev = head.anchor_seq + 1, head.anchor_hash
    checked = 0
    for row in rows:
        assert row.seq is not None
        if row.seq < expected_seq:
            return VerifyReport(False, checked, f"row {row.id} has seq {row.seq}, before the chain's anchor "
                                f"(seq {head.anchor_seq}): inserted or renumbered", row.id, row.seq)
        if row.seq > expected_seq:
            missing = f"seq {expected_seq}" if row.seq == expected_seq + 1 else f"seq {expected_seq} to {row.seq - 1}"
            return VerifyReport(False, checked, f"row(s) removed: {missing} missing before row {row.id} "
                                f"(seq {row.seq})", row.id, row.seq)
        if row.prev_hash != prev:
            return VerifyReport(False, checked, f"row {row.id} (seq {row.seq}) is out of place: it does not follow "
                                f"the row before it (reordered, or the row before it was replaced)", row.id, row.seq)
        if row.hash is None or not hmac.compare_digest(chain_hash(key, prev, row), row.hash):
            return VerifyReport(False, checked, f"row {row.id} (seq {row.seq}) was changed: its hash does not match "
                                "its content", row.id, row.seq)
        prev, expected_seq = row.hash, expected_seq + 1
        checked += 1
    if expected_seq - 1 != head.last_seq or prev != head.last_hash:
        if expected_seq - 1 < head.last_seq:
            return VerifyReport(False, checked, f"row(s) removed at the end: seq {expected_seq} to {head.last_seq} "
                                "are missing", None, expected_seq)
        return VerifyReport(False, checked, f"the chain goes past its head (seq {head.last_seq}): rows added "
                            "without the sealer", None, head.last_seq + 1)
    return VerifyReport(True, checked)
