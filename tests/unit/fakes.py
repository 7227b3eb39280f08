"""In-memory fakes for fast service tests (cosmicpython's FakeRepository / FakeUnitOfWork)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import types
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from payment_service.domain import audit
from payment_service.domain.audit import AuditEvent
from payment_service.domain.events import Event
from payment_service.domain.lifecycle import Move
from payment_service.domain.payments import (
    IdempotencyRecord,
    InboxEvent,
    Page,
    PageCursor,
    Payment,
    PaymentMethod,
    Refund,
)
from payment_service.domain.withdrawals import Withdrawal  # --- withdrawals ---
from payment_service.gateways.base import (
    CardDetails,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    GatewayError,
    GatewayUnavailableError,
    PayoutRequest,  # --- withdrawals ---
    PayoutResult,
    PayoutStatus,  # --- withdrawals ---
    RefundResult,
    RefundStatus,
    SavedMethod,
    WebhookEvent,
)
from payment_service.services import unit_of_work as abstract
from payment_service.services.audit import AuditLog


class _Store:
    """What a database would hold; shared by every FakeUnitOfWork of one test."""

    def __init__(self) -> None:
        self.payments: dict[str, Payment] = {}
        self.methods: dict[str, PaymentMethod] = {}
        self.customers: dict[tuple[str, str], str] = {}
        self.refunds: dict[str, Refund] = {}
        self.idem: dict[tuple[str, str], IdempotencyRecord] = {}
        self.outbox: list[Event] = []
        self.inbox: dict[int, InboxEvent] = {}
        self.ids = itertools.count(1)
        self.commits = 0  # every FakeUnitOfWork.commit() of this store: one database transaction each
        # --- withdrawals ---
        self.withdrawals: dict[str, Withdrawal] = {}
        # --- end withdrawals ---
        self.audit: list[AuditEvent] = []  # audit rows committed (FakeAuditLog)


class FakePayments(abstract.PaymentRepository):
    def __init__(self, db: dict[str, Payment]) -> None:
        self.db = db

    def add(self, payment: Payment) -> None:
        assert payment.id not in self.db
        self.db[payment.id] = copy.deepcopy(payment)

    def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        p = self.db.get(payment_id)
        return copy.deepcopy(p) if p else None

    def list_for_user(self, user_id, status, limit, cursor: PageCursor | None) -> Page:
        rows = sorted(
            (p for p in self.db.values() if (user_id is None or p.user_id == user_id)
             and (status is None or p.status == status)),
            key=lambda p: (p.created_at, p.id), reverse=True,
        )
        if cursor:
            rows = [p for p in rows if (p.created_at, p.id) < (cursor.created_at, cursor.id)]
        items = rows[:limit]
        return Page(items, PageCursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None)

    def velocity(self, user_id: str, since: datetime) -> tuple[int, int]:
        mine = [p for p in self.db.values() if p.user_id == user_id and p.created_at >= since]
        return len(mine), sum(p.amount for p in mine if p.status in ("CAPTURED", "PENDING", "PENDING_3DS"))

    def device_seen(self, user_id: str, device_id: str) -> bool:
        return any(p.user_id == user_id and p.device_id == device_id and p.status == "CAPTURED"
                   for p in self.db.values())

    def find_by_gateway_id(self, gateway: str, gateway_payment_id: str) -> Payment | None:
        return next((p for p in self.db.values() if p.gateway == gateway
                     and p.gateway_payment_id == gateway_payment_id), None)

    def reserve_refund(self, payment_id: str, amount: int, at: datetime) -> bool:
        p = self.db.get(payment_id)
        if p is None or p.status != "CAPTURED" or p.refunded_amount + amount > p.amount:
            return False
        self.db[payment_id] = Payment(**{**vars(p), "refunded_amount": p.refunded_amount + amount, "updated_at": at})
        return True

    def release_refund(self, payment_id: str, amount: int, at: datetime) -> None:
        p = self.db[payment_id]
        if p.refunded_amount >= amount:
            self.db[payment_id] = Payment(**{**vars(p), "refunded_amount": p.refunded_amount - amount,
                                             "updated_at": at})


class FakeGatewayEvents(abstract.GatewayEventRepository):
    def __init__(self, store: _Store) -> None:
        self.store = store

    def add(self, event: InboxEvent) -> bool:
        if any((e.gateway, e.gateway_event_id) == (event.gateway, event.gateway_event_id)
               for e in self.store.inbox.values()):
            return False
        event.id = next(self.store.ids)
        self.store.inbox[event.id] = copy.deepcopy(event)
        return True

    def claim_due(self, now: datetime, lease_until: datetime, fresh: int, retries: int) -> list[InboxEvent]:
        by_due = sorted(self.store.inbox.values(), key=lambda e: (e.next_attempt_at, e.id))
        lanes = (
            [e for e in by_due if e.status == "RECEIVED" and e.next_attempt_at <= now][:fresh]
            + [e for e in by_due if e.status == "RETRY" and e.next_attempt_at <= now][:retries]
            + [e for e in by_due if e.status == "PROCESSING" and e.next_attempt_at < now][:retries]
        )
        for e in lanes:
            e.status, e.next_attempt_at, e.attempts = "PROCESSING", lease_until, e.attempts + 1
        return [copy.deepcopy(e) for e in lanes]

    def _held(self, event_id: int, attempts: int) -> InboxEvent | None:
        e = self.store.inbox[event_id]
        return e if e.status == "PROCESSING" and e.attempts == attempts else None

    def settle(self, event_id: int, attempts: int, status: str, now: datetime, error: str | None = None) -> bool:
        e = self._held(event_id, attempts)
        if e is None:
            return False
        e.status, e.applied_at, e.next_attempt_at, e.last_error = status, now, now, error
        return True

    def settle_many(self, events: list[InboxEvent], status: str, now: datetime) -> int:
        held = [self.store.inbox[c.id] for c in events if self.store.inbox[c.id].status == "PROCESSING"
                and self.store.inbox[c.id].next_attempt_at == c.next_attempt_at]
        for e in held:
            e.status, e.applied_at, e.next_attempt_at, e.last_error = status, now, now, None
        return len(held)

    def retry_later(self, event_id: int, attempts: int, next_attempt_at: datetime, error: str) -> bool:
        e = self._held(event_id, attempts)
        if e is None:
            return False
        e.status, e.next_attempt_at, e.last_error = "RETRY", next_attempt_at, error
        return True

    def give_back(self, events: list[InboxEvent], now: datetime) -> None:
        for claimed in events:
            e = self._held(claimed.id, claimed.attempts)
            if e is not None:
                e.status = "RECEIVED" if e.attempts <= 1 else "RETRY"
                e.attempts, e.next_attempt_at = e.attempts - 1, now


class FakeMethods(abstract.PaymentMethodRepository):
    def __init__(self, db: dict[str, PaymentMethod]) -> None:
        self.db = db

    def add(self, method: PaymentMethod) -> None:
        self.db[method.id] = method

    def get(self, method_id: str) -> PaymentMethod | None:
        return self.db.get(method_id)

    def list_active(self, user_id: str) -> list[PaymentMethod]:
        return [m for m in self.db.values() if m.user_id == user_id and m.deleted_at is None]

    def soft_delete(self, method_id: str, at: datetime) -> bool:
        m = self.db.get(method_id)
        if m is None or m.deleted_at is not None:
            return False
        m.deleted_at = at
        return True


class FakeCustomers(abstract.CustomerRepository):
    def __init__(self, db: dict[tuple[str, str], str]) -> None:
        self.db = db

    def get(self, user_id: str, gateway: str) -> str | None:
        return self.db.get((user_id, gateway))

    def add(self, user_id: str, gateway: str, customer_ref: str, at: datetime) -> str:
        return self.db.setdefault((user_id, gateway), customer_ref)


class FakeRefunds(abstract.RefundRepository):
    def __init__(self, db: dict[str, Refund]) -> None:
        self.db = db

    def add(self, refund: Refund) -> None:
        self.db[refund.id] = refund

    def get(self, refund_id: str) -> Refund | None:
        r = self.db.get(refund_id)
        return copy.deepcopy(r) if r else None

    def find_by_gateway_id(self, gateway_refund_id: str) -> Refund | None:
        return next((r for r in self.db.values() if r.gateway_refund_id == gateway_refund_id), None)

    def list_for_payment(self, payment_id: str) -> list[Refund]:
        return sorted((r for r in self.db.values() if r.payment_id == payment_id), key=lambda r: (r.created_at, r.id))

class FakeWithdrawals(abstract.WithdrawalRepository):
    def __init__(self, db: dict[str, Withdrawal]) -> None:
        self.db = db

    def add(self, withdrawal: Withdrawal) -> None:
        assert withdrawal.id not in self.db
        self.db[withdrawal.id] = copy.deepcopy(withdrawal)

    def get(self, withdrawal_id: str, *, for_update: bool = False) -> Withdrawal | None:
        w = self.db.get(withdrawal_id)
        return copy.deepcopy(w) if w else None

    def find_by_gateway_id(self, gateway_payout_id: str) -> Withdrawal | None:
        return copy.deepcopy(next((w for w in self.db.values() if w.gateway_payout_id == gateway_payout_id), None))

class FakeRecords(abstract.RecordRepository):
    """The one primitive, over the unit of work's private copies of the three tables."""

    def __init__(self, tables: dict[str, dict[str, Any]], outbox: FakeOutbox, audit_log: Any = None) -> None:
        self.tables = tables
        self.outbox = outbox
        self.audit_log = audit_log  # --- audit trail: a row per move, in the same unit of work

    def get(self, kind: str, record_id: str, *, for_update: bool = False) -> Any | None:
        r = self.tables[kind].get(record_id)
        return copy.deepcopy(r) if r else None

    def move(self, move: Move[Any]) -> bool:
        table = self.tables[move.kind]
        r = table.get(move.record_id)
        if r is None or r.status not in move.allowed_from:
            return False
        table[move.record_id] = dataclasses.replace(r, status=move.target, **move.changes)
        if move.event is not None:
            self.outbox.add(move.event)
        if self.audit_log is not None:
            self.audit_log.add(audit.state_change(move.kind, move.record_id, move.target,
                                                  move.changes["updated_at"], dict(move.changes)))
        return True

    def update(self, kind: str, record_id: str, **changes: Any) -> None:
        table = self.tables[kind]
        table[record_id] = dataclasses.replace(table[record_id], **changes)

    def claim(self, kind: str, record_id: str, statuses: Collection[str], now: datetime, until: datetime) -> bool:
        r = self.tables[kind].get(record_id)
        if r is None or r.status not in statuses or (r.claimed_until is not None and r.claimed_until >= now):
            return False
        self.update(kind, record_id, claimed_until=until)
        return True

    def claim_due(self, kind: str, statuses: Collection[str], now: datetime, until: datetime, limit: int) -> list[Any]:
        due = sorted(
            (r for r in self.tables[kind].values()
             if r.status in statuses and r.next_attempt_at is not None and r.next_attempt_at <= now
             and (r.claimed_until is None or r.claimed_until < now)),
            key=lambda r: r.next_attempt_at,
        )[:limit]
        for r in due:
            self.update(kind, r.id, claimed_until=until)
        return [copy.deepcopy(self.tables[kind][r.id]) for r in due]

    def release(self, kind: str, record_id: str, *, next_attempt_at: datetime, error: str | None = None,
                count_attempt: bool = True) -> None:
        r = self.tables[kind][record_id]
        self.update(kind, record_id, claimed_until=None, next_attempt_at=next_attempt_at, last_error=error,
                    attempts=r.attempts + (1 if count_attempt else 0))


class FakeIdempotency(abstract.IdempotencyRepository):
    def __init__(self, store: Any) -> None:
        self.store = store  # anything with .idem and .ids: the unit of work's private copy

    def insert(self, record: IdempotencyRecord) -> bool:
        k = (record.caller, record.key)
        if k in self.store.idem:
            return False
        record.id = next(self.store.ids)
        self.store.idem[k] = copy.deepcopy(record)
        return True

    def get(self, caller: str, key: str) -> IdempotencyRecord | None:
        r = self.store.idem.get((caller, key))
        return copy.deepcopy(r) if r else None

    def confirm(self) -> None:
        return None  # the insert above ran at once

    def take_over(self, caller: str, key: str, now: datetime, locked_until: datetime) -> bool:
        r = self.store.idem[(caller, key)]
        if r.status != "IN_PROGRESS" or (r.locked_until is not None and r.locked_until >= now):
            return False
        r.locked_until = locked_until
        return True

    def complete(self, caller: str, key: str, status: int, body: str, resource_id: str | None) -> None:
        r = self.store.idem[(caller, key)]
        r.status, r.response_status, r.response_body, r.locked_until = "COMPLETED", status, body, None
        r.recovery_point = "FINISHED"

    def release(self, caller: str, key: str) -> None:
        self.store.idem[(caller, key)].locked_until = None

    def delete(self, caller: str, key: str) -> None:
        del self.store.idem[(caller, key)]


class FakeOutbox(abstract.OutboxRepository):
    def __init__(self, pending: list[Event]) -> None:
        self.pending = pending

    def add(self, event: Event) -> None:
        self.pending.append(event)


class FakeAuditLog(AuditLog):
    def __init__(self, rows: list[AuditEvent]) -> None:
        self.rows = rows

    def add(self, event: AuditEvent) -> None:
        self.rows.append(event)


class FakeUnitOfWork(abstract.AbstractUnitOfWork):
    """Writes go to a private copy of the store and reach it only on commit()."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.committed = False

    def __enter__(self) -> FakeUnitOfWork:
        self._work = copy.deepcopy(
            {"payments": self.store.payments, "methods": self.store.methods, "customers": self.store.customers,
             "refunds": self.store.refunds}
        )
        self._outbox: list[Event] = []
        self.payments = FakePayments(self._work["payments"])
        self.payment_methods = FakeMethods(self._work["methods"])
        self.customers = FakeCustomers(self._work["customers"])
        self.refunds = FakeRefunds(self._work["refunds"])
        self._idem = copy.deepcopy(self.store.idem)
        self.idempotency = FakeIdempotency(types.SimpleNamespace(idem=self._idem, ids=self.store.ids))
        self.outbox = FakeOutbox(self._outbox)
        self.gateway_events = FakeGatewayEvents(self.store)  # immediate: the inbox's own transactions are short
        self._withdrawals = copy.deepcopy(self.store.withdrawals)
        self.withdrawals = FakeWithdrawals(self._withdrawals)
        self._audit: list[AuditEvent] = []
        self.records = FakeRecords(
            {"payment": self._work["payments"], "refund": self._work["refunds"], "withdrawal": self._withdrawals},
            self.outbox, FakeAuditLog(self._audit),
        )
        return self

    def commit(self) -> None:
        self.store.payments.clear()
        self.store.payments.update(self._work["payments"])
        self.store.methods.clear()
        self.store.methods.update(self._work["methods"])
        self.store.customers.clear()
        self.store.customers.update(self._work["customers"])
        self.store.refunds.clear()
        self.store.refunds.update(self._work["refunds"])
        self.store.withdrawals.clear()
        self.store.withdrawals.update(self._withdrawals)
        self.store.idem.clear()
        self.store.idem.update(self._idem)
        self.store.outbox.extend(self._outbox)
        self._outbox.clear()
        self.store.audit.extend(self._audit)
        self._audit.clear()
        self.committed = True
        self.store.commits += 1

    def rollback(self) -> None:
        self._outbox.clear()
        self._audit.clear()


class Clock:
    """A clock the test moves by hand: `clock.advance(seconds=901)`."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


class Seconds:
    """A clock in epoch seconds (what `time.time` gives) the test moves by hand: `clock.t += 61`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def fake_uow_factory() -> tuple[Any, _Store]:
    store = _Store()
    return (lambda: FakeUnitOfWork(store)), store


VISA = CardDetails("visa", "4242", 12, 2030, "US", "424242", "fp_visa")


class FakeGateway:
    """Answers by token like the gateways' test tokens; remembers results by idempotency key."""

    name = "stripe"

    def __init__(self) -> None:
        self.charges: dict[str, ChargeRequest] = {}
        self.results: dict[str, ChargeResult] = {}
        self.calls: list[ChargeRequest] = []
        self.unavailable = False
        self.detached: list[str] = []

    def charge(self, request: ChargeRequest) -> ChargeResult:
        self.calls.append(request)
        if self.unavailable:
            raise GatewayUnavailableError("timeout")
        if request.idempotency_key in self.results:
            return self.results[request.idempotency_key]
        gid = f"pi_{len(self.results) + 1}"
        token = request.token
        if token == "tok_invalid":
            raise GatewayError("No such PaymentMethod", code="invalid_token")
        if token.endswith("Declined"):
            r = ChargeResult(ChargeStatus.FAILED, gid, failure_code="card_declined", failure_message="declined",
                             card=VISA)
        elif "threeDSecure" in token or request.request_three_d_secure:
            r = ChargeResult(ChargeStatus.REQUIRES_ACTION, gid, redirect_url=f"http://sandbox/3ds/{gid}", card=VISA)
        else:
            r = ChargeResult(ChargeStatus.SUCCEEDED, gid, amount=request.amount, card=VISA)
        self.charges[gid] = request
        self.results[request.idempotency_key] = r
        return r

    def create_customer(self, user_id: str, *, idempotency_key: str) -> str:
        return f"cus_{user_id}"

    def attach_payment_method(self, customer_ref: str, token: str, *, idempotency_key: str) -> SavedMethod:
        if token == "tok_invalid":
            raise GatewayError("No such token", code="invalid_token")
        return SavedMethod(f"pm_saved_{token}", customer_ref, VISA)

    def detach_payment_method(self, saved: SavedMethod) -> None:
        if self.unavailable:
            raise GatewayUnavailableError("down")
        self.detached.append(saved.token_ref)

    # What the fake gateway "knows" about each charge, for retrieve/find/cancel and events.
    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        if self.unavailable:
            raise GatewayUnavailableError("down")
        return self.state[gateway_payment_id]

    def find_charge(self, reference: str) -> ChargeResult | None:
        if self.unavailable:
            raise GatewayUnavailableError("down")
        return next((r for r in self.state.values() if r.reference == reference), None)

    def cancel_charge(self, gateway_payment_id: str, *, idempotency_key: str) -> ChargeResult:
        if self.unavailable:
            raise GatewayUnavailableError("down")
        current = self.state[gateway_payment_id]
        if current.status is ChargeStatus.SUCCEEDED:
            return current
        canceled = ChargeResult(ChargeStatus.CANCELED, gateway_payment_id, reference=current.reference)
        self.state[gateway_payment_id] = canceled
        return canceled

    def refund(self, gateway_payment_id, amount, currency, *, reference, idempotency_key) -> RefundResult:
        if self.unavailable:
            raise GatewayUnavailableError("down")
        if idempotency_key not in self.refunds:
            self.refunds[idempotency_key] = RefundResult(f"re_g{len(self.refunds) + 1}", RefundStatus.SUCCEEDED, amount)
        return self.refunds[idempotency_key]

    @property
    def state(self) -> dict[str, ChargeResult]:
        if not hasattr(self, "_state"):
            self._state: dict[str, ChargeResult] = {}
        for r in self.results.values():
            if r.gateway_payment_id and r.gateway_payment_id not in self._state:
                ref = self.charges[r.gateway_payment_id].reference if r.gateway_payment_id in self.charges else None
                self._state[r.gateway_payment_id] = ChargeResult(**{**vars(r), "reference": ref})
        return self._state

    @property
    def refunds(self) -> dict[str, RefundResult]:
        if not hasattr(self, "_refunds"):
            self._refunds: dict[str, RefundResult] = {}
        return self._refunds

    # Events: the payload is {"charge": {...ChargeResult fields...}}.
    def charge_result_from_event(self, event: WebhookEvent) -> ChargeResult | None:
        c = event.payload.get("charge")
        if c is None:
            return None
        return ChargeResult(ChargeStatus(c["status"]), c.get("id"), reference=c.get("reference"),
                            failure_code=c.get("failure_code"), card=VISA)

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        return None

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        return None


# --- refunds and withdrawals: a gateway whose refunds and payouts can be steered by the test --------


class FakeMoneyOutGateway(FakeGateway):
    """FakeGateway plus refunds that may be pending, fail or time out, and RazorpayX-like payouts.

    Events: payload {"refund": {"id", "status", "amount", "failure_reason"}} (our refund statuses) or
    {"payout": {"id", "status", "utr", "failure_reason"}} (Razorpay's payout statuses, or ours)."""

    def __init__(self) -> None:
        super().__init__()
        self.refund_status = RefundStatus.SUCCEEDED
        self.refund_error: GatewayError | None = None
        self.refund_lost_response = False  # do the refund, then raise as if the answer was lost
        self.refund_calls: list[tuple[str, int, str, str]] = []  # (gateway payment id, amount, reference, key)
        self.refund_state: dict[str, RefundResult] = {}
        self.payout_status = PayoutStatus.PROCESSING
        self.payout_error: GatewayError | None = None
        self.payout_unavailable = False
        self.payout_lost_response = False
        self.payout_calls: list[PayoutRequest] = []
        self.payout_by_key: dict[str, str] = {}
        self.payout_state: dict[str, PayoutResult] = {}
        self.payout_refs: dict[str, str] = {}  # payout id -> our withdrawal id

    # refunds
    def refund(self, gateway_payment_id, amount, currency, *, reference, idempotency_key) -> RefundResult:
        self.refund_calls.append((gateway_payment_id, amount, reference, idempotency_key))
        if self.unavailable:
            raise GatewayUnavailableError("down")
        if self.refund_error is not None:
            raise self.refund_error
        if idempotency_key not in self.refunds:
            result = RefundResult(f"re_g{len(self.refunds) + 1}", self.refund_status, amount,
                                  "declined by the bank" if self.refund_status is RefundStatus.FAILED else None)
            self.refunds[idempotency_key] = result
            self.refund_state[result.gateway_refund_id] = result
        if self.refund_lost_response:
            raise GatewayUnavailableError("lost response")
        return self.refund_state[self.refunds[idempotency_key].gateway_refund_id]

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        if self.unavailable:
            raise GatewayUnavailableError("down")
        return self.refund_state[gateway_refund_id]

    def refund_result_from_event(self, event: WebhookEvent) -> RefundResult | None:
        r = event.payload.get("refund")
        if r is None:
            return None
        return RefundResult(r["id"], RefundStatus(r["status"]), r.get("amount", 0), r.get("failure_reason"))

    # payouts
    def create_payout(self, request: PayoutRequest) -> PayoutResult:
        self.payout_calls.append(request)
        if self.payout_unavailable:
            raise GatewayUnavailableError("down")
        if self.payout_error is not None:
            raise self.payout_error
        if request.idempotency_key not in self.payout_by_key:
            pid = f"pout_{len(self.payout_by_key) + 1}"
            self.payout_by_key[request.idempotency_key] = pid
            self.payout_refs[pid] = request.reference
            self.payout_state[pid] = PayoutResult(pid, self.payout_status, fund_account_ref=f"fa_{pid}",
                                                  utr="UTR" + pid if self.payout_status is PayoutStatus.SETTLED
                                                  else None)
        if self.payout_lost_response:
            raise GatewayUnavailableError("lost response")
        return self.payout_state[self.payout_by_key[request.idempotency_key]]

    def retrieve_payout(self, gateway_payout_id: str) -> PayoutResult:
        if self.payout_unavailable:
            raise GatewayUnavailableError("down")
        return self.payout_state[gateway_payout_id]

    def find_payout(self, reference: str) -> PayoutResult | None:
        if self.payout_unavailable:
            raise GatewayUnavailableError("down")
        pid = next((p for p, ref in self.payout_refs.items() if ref == reference), None)
        return None if pid is None else self.payout_state[pid]

    def move_payout(self, payout_id: str, status: PayoutStatus, utr: str | None = None,
                    reason: str | None = None) -> PayoutResult:
        current = self.payout_state[payout_id]
        moved = PayoutResult(payout_id, status, current.fund_account_ref, utr or current.utr, reason)
        self.payout_state[payout_id] = moved
        return moved

    def payout_result_from_event(self, event: WebhookEvent) -> PayoutResult | None:
        p = event.payload.get("payout")
        if p is None:
            return None
        from payment_service.gateways.razorpay_gateway import PAYOUT_STATUSES  # Razorpay's words -> ours

        status = PAYOUT_STATUSES.get(p["status"]) or PayoutStatus(p["status"])
        return PayoutResult(p["id"], status, utr=p.get("utr"), failure_reason=p.get("failure_reason"))


# --- end refunds and withdrawals -----------------------------------------------------------


def run_flow(flow: Any, uow_factory: Any, key: str | None = None, caller: str = "user:u_1",
             now: Any = None, fingerprint: str = "fp", lock_seconds: float = 60) -> Any:
    """Drive a keyed request (TopUpFlow, RefundFlow, WithdrawalFlow) as the API does, with the
    given Idempotency-Key (a new one if None); returns the record as stored afterwards."""
    import json
    import uuid

    from payment_service.domain.events import utcnow
    from payment_service.services import idempotency

    req = idempotency.KeyedRequest(caller, key or uuid.uuid4().hex, "POST", "/test", fingerprint, 86400,
                                   lock_seconds)
    reply = idempotency.execute(flow, req, uow_factory, lambda r: ({"id": r.id, "status": r.status}, 200),
                                now or utcnow)
    record_id = json.loads(reply.body)["id"]
    with uow_factory() as uow:
        return uow.records.get(flow.kind, record_id)


# --- settlement reconciliation (issue 13) -------------------------------------------------------


class FakeSettlementGateway:
    """A gateway's day as lists: `charges` and `refunds` (SettledCharge / SettledRefund), listed by
    creation time and looked up one by one like the adapters do."""

    def __init__(self, name: str = "stripe") -> None:
        from payment_service.gateways.base import SettledCharge, SettledRefund

        self.name = name
        self.charges: list[SettledCharge] = []
        self.refunds: list[SettledRefund] = []
        self.lookups: list[str] = []
        self.unavailable = False

    def list_charges(self, start: datetime, end: datetime) -> Any:
        if self.unavailable:
            raise GatewayUnavailableError("timeout")
        return iter([c for c in self.charges if c.created_at is not None and start <= c.created_at < end])

    def list_refunds(self, start: datetime, end: datetime) -> Any:
        return iter([r for r in self.refunds if r.created_at is not None and start <= r.created_at < end])

    def retrieve_charge(self, gateway_payment_id: str) -> ChargeResult:
        self.lookups.append(gateway_payment_id)
        for c in self.charges:
            if c.gateway_payment_id == gateway_payment_id:
                return ChargeResult(c.status, c.gateway_payment_id, amount=c.amount, currency=c.currency,
                                    reference=c.reference, raw_status=c.raw_status)
        raise GatewayError("No such payment_intent", code="not_found")

    def find_charge(self, reference: str) -> ChargeResult | None:
        self.lookups.append(reference)
        found = [c for c in self.charges if c.reference == reference]
        return self.retrieve_charge(found[0].gateway_payment_id) if found else None

    def retrieve_refund(self, gateway_refund_id: str, gateway_payment_id: str | None = None) -> RefundResult:
        self.lookups.append(gateway_refund_id)
        for r in self.refunds:
            if r.gateway_refund_id == gateway_refund_id:
                return RefundResult(r.gateway_refund_id, r.status, r.amount)
        raise GatewayError("No such refund", code="not_found")


class FakeLedger:
    """Our side of reconciliation: OurPayment / OurRefund lists (services/reconciliation.SettlementLedger)."""

    def __init__(self) -> None:
        self.payments: list[Any] = []
        self.refunds: list[Any] = []

    def payments_created(self, gateway: str, start: datetime, end: datetime) -> list[Any]:
        return [p for p in self.payments if p.gateway == gateway and start <= p.created_at < end]

    def refunds_created(self, gateway: str, start: datetime, end: datetime) -> list[Any]:
        return [r for r in self.refunds if r.gateway == gateway and start <= r.created_at < end]

    def payments_matching(self, gateway: str, gateway_payment_ids: Any, payment_ids: Any) -> list[Any]:
        gids, ids = set(gateway_payment_ids), set(payment_ids)
        return [p for p in self.payments if (p.gateway == gateway and p.gateway_payment_id in gids) or p.id in ids]

    def refunds_matching(self, gateway: str, gateway_refund_ids: Any, refund_ids: Any, charge_ids: Any) -> list[Any]:
        grids, ids, charges = set(gateway_refund_ids), set(refund_ids), set(charge_ids)
        return [r for r in self.refunds if r.gateway == gateway and (
            r.gateway_refund_id in grids or r.id in ids or (r.late and r.charge_id in charges))]


class FakeRunLog:
    """reconcile_runs in memory: run id -> row dict."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def start(self, day: Any, gateway: str, trigger: str, now: datetime, *, exclusive: bool = False,
              stale_before: datetime | None = None) -> int | None:
        if exclusive:
            for run_id, row in self.rows.items():
                if row["claim"] == (day, gateway, trigger):
                    stale = (row["status"] == "RUNNING" and stale_before is not None
                             and row["started_at"] < stale_before)
                    if row["status"] != "FAILED" and not stale:
                        return None
                    row.update(status="RUNNING", started_at=now, error=None)
                    return run_id
        run_id = len(self.rows) + 1
        self.rows[run_id] = {"day": day, "gateway": gateway, "trigger": trigger, "status": "RUNNING",
                             "started_at": now, "claim": (day, gateway, trigger) if exclusive else None}
        return run_id

    def finish(self, run_id: int, report: Any, report_location: str | None) -> None:
        self.rows[run_id].update(status="CLEAN" if report.clean else "DIFFERENCES",
                                 differences=len(report.differences), report_location=report_location)

    def fail(self, run_id: int, error: str, now: datetime) -> None:
        self.rows[run_id].update(status="FAILED", error=error)


# --- end settlement reconciliation ---------------------------------------------------------------
