"""The lifecycle of every record that moves money, declared once: payments, refunds, withdrawals.

For each kind, one `Lifecycle` says:

- its statuses, and for each target status the statuses it may be reached from (rule 4: the
  repository turns this into `UPDATE ... WHERE id = :id AND status IN (:allowed)`);
- which statuses are *open*: the gateway still owes us an answer, so a sweep looks at them;
- how a gateway's answer (its outcome word: `succeeded`, `requires_action`, ...) maps to a target
  status (None: no move yet, ask again later);
- which event a move to each status emits (the outbox row written in the same transaction).

The services decide nothing of this themselves. They ask `Lifecycle.move()` for a `Move` (the
guarded change and its event) and hand it to the unit of work, which applies it as one guarded
UPDATE and writes the outbox row only when the row moved. Whoever gets there first (the request,
a webhook, a sweep) wins; the others find the row moved and re-read it.

Standard library only.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from .events import Event, EventType, rfc3339
from .model import PaymentStatus, RefundStatus, WithdrawalStatus
from .payments import Payment, Refund
from .withdrawals import Withdrawal

R = TypeVar("R", Payment, Refund, Withdrawal)

PAYMENT = "payment"
REFUND = "refund"
WITHDRAWAL = "withdrawal"

# Failure codes this lifecycle writes on a payment (CONTRACT.md names the first).
EXPIRED_THEN_REFUNDED = "expired_then_refunded"
FAILED_THEN_REFUNDED = "failed_then_refunded"
LATE_SUCCESS_REASON = "late_success"  # the reason of the refund that gives a late success back
NOT_SUBMITTED = "not_submitted"


@dataclass(frozen=True)
class Move(Generic[R]):
    """One guarded change of one record, and the event it emits if (and only if) the row moves."""

    kind: str
    record_id: str
    target: str
    allowed_from: tuple[str, ...]
    changes: Mapping[str, Any]  # the columns written besides status (never the status itself)
    after: R  # the record as it is once the move applied
    event: Event | None


EventBuilder = Callable[[Any, datetime, Any], "Event | None"]


@dataclass(frozen=True)
class Lifecycle(Generic[R]):
    kind: str
    statuses: tuple[str, ...]
    # For each target status, the statuses a record may move to it from. A status that appears on
    # no right-hand side is final: it never moves again.
    transitions: Mapping[str, frozenset[str]]
    open: frozenset[str]  # the gateway still owes an answer: claimed while in flight, swept otherwise
    outcomes: Mapping[str, str | None]  # the gateway's outcome word -> target status (None: not yet)
    events: Mapping[str, EventBuilder]  # target status -> the event a move there emits

    def allowed_from(self, target: str) -> frozenset[str]:
        return self.transitions.get(target, frozenset())

    def can_move(self, current: str, target: str) -> bool:
        return current in self.allowed_from(target)

    def target_for(self, outcome: str) -> str | None:
        """The status a gateway answer asks for; KeyError for a word the gateway should never send."""
        return self.outcomes[outcome]

    def path(self, current: str, target: str) -> list[str]:
        """The steps from `current` to `target`, in order (shortest walk through allowed moves).

        Empty when `target` is behind or equal to `current`, or unreachable: an answer that arrives
        after a later one (a duplicate, a reordered webhook) changes nothing. A payout reported
        `reversed` while we still say REQUESTED walks PROCESSING, SETTLED, REVERSED: each step
        emits its own event, so the wallet sees the settlement it is now being asked to undo.
        """
        if current == target:
            return []
        seen = {current}
        queue: deque[tuple[str, list[str]]] = deque([(current, [])])
        while queue:
            status, steps_so_far = queue.popleft()
            steps: list[str] = steps_so_far
            for nxt in self.statuses:
                if nxt not in seen and self.can_move(status, nxt):
                    if nxt == target:
                        return [*steps, nxt]
                    seen.add(nxt)
                    queue.append((nxt, [*steps, nxt]))
        return []

    def move(self, record: R, target: str, at: datetime, context: Any = None, **changes: Any) -> Move[R]:
        """The guarded move of `record` to `target`. Every move ends a claim: the gateway call that
        held it is over. `context` is what the event needs besides the record (a refund's payment)."""
        if target not in self.transitions:
            raise ValueError(f"{self.kind} cannot move to {target}")
        written = {**changes, "updated_at": at, "claimed_until": None}
        after = replace(record, status=target, **written)
        build = self.events.get(target)
        event = build(after, at, context) if build is not None else None
        return Move(self.kind, record.id, target, tuple(sorted(self.allowed_from(target))), written, after, event)


# --- payments -------------------------------------------------------------------------------


def _payment_data(p: Payment) -> dict[str, Any]:
    return {
        "payment_id": p.id,
        "user_id": p.user_id,
        "amount": p.amount,
        "currency": p.currency,
        "gateway": p.gateway,
        "gateway_payment_id": p.gateway_payment_id,
        **canonical_data(p),
    }


def canonical_data(record: Payment | Refund | Withdrawal) -> dict[str, Any]:
    """The event fields of issue 13: the amount in the canonical currency, or nulls without a rate."""
    return {"canonical_amount": record.canonical_amount, "canonical_currency": record.canonical_currency}


def payment_captured_event(p: Payment, at: datetime, _: Any = None) -> Event:
    captured_at = p.captured_at or at
    return Event(
        EventType.PAYMENT_CAPTURED, p.id, p.user_id, {**_payment_data(p), "captured_at": rfc3339(captured_at)}
    )


def payment_failed_event(p: Payment, at: datetime | None = None, _: Any = None) -> Event:
    data = {**_payment_data(p), "failure_code": p.failure_code, "failure_message": p.failure_message}
    return Event(EventType.PAYMENT_FAILED, p.id, p.user_id, data)


def payment_expired_event(p: Payment, at: datetime, _: Any = None) -> Event:
    return Event(EventType.PAYMENT_EXPIRED, p.id, p.user_id, _payment_data(p))


_P = PaymentStatus
PAYMENTS: Lifecycle[Payment] = Lifecycle(
    kind=PAYMENT,
    statuses=tuple(s.value for s in PaymentStatus),
    # CAPTURED, FAILED and EXPIRED are final: a success that arrives after FAILED or EXPIRED is not a
    # move back but a late success, given back by a refund (`late_refund`).
    transitions={
        _P.PENDING_3DS.value: frozenset({_P.PENDING.value}),
        _P.CAPTURED.value: frozenset({_P.PENDING.value, _P.PENDING_3DS.value}),
        _P.FAILED.value: frozenset({_P.PENDING.value, _P.PENDING_3DS.value}),
        _P.EXPIRED.value: frozenset({_P.PENDING_3DS.value}),
    },
    open=frozenset({_P.PENDING.value, _P.PENDING_3DS.value}),
    outcomes={
        "succeeded": _P.CAPTURED.value,
        "requires_action": _P.PENDING_3DS.value,
        "processing": None,
        "failed": _P.FAILED.value,
        "canceled": _P.FAILED.value,
    },
    events={
        _P.CAPTURED.value: payment_captured_event,
        _P.FAILED.value: payment_failed_event,
        _P.EXPIRED.value: payment_expired_event,
    },
)


def failure_applies(payment: Payment, attempt_id: str | None) -> bool:
    """A failure fails only the attempt it belongs to. Razorpay makes a new attempt (payment) on the
    same order when a retry finds the first one waiting for 3-D Secure; the first attempt's later
    `payment.failed` must not fail the payment the customer is completing with the second."""
    return attempt_id is None or payment.gateway_payment_id is None or attempt_id == payment.gateway_payment_id


def cancel_is_expiry(payment: Payment, at: datetime) -> bool:
    """A cancel of a payment waiting for 3-D Secure past its deadline is its expiry. The expiry sweep
    cancels exactly those, and the gateway's webhook about that cancel may land before the sweep's own
    answer does: either way the payment is EXPIRED, not FAILED. A cancel before the deadline (in the
    gateway's Dashboard) fails it."""
    return (
        payment.status == _P.PENDING_3DS.value and payment.expires_at is not None and payment.expires_at <= at
    )


def is_late_success(payment: Payment, attempt_id: str | None) -> bool:
    """A verified capture that no move can record: the payment is closed (FAILED, EXPIRED), or it was
    captured by another attempt. Its money must go back (rule 8)."""
    if payment.status in (_P.FAILED.value, _P.EXPIRED.value):
        return True
    return (
        payment.status == _P.CAPTURED.value
        and attempt_id is not None
        and payment.gateway_payment_id is not None
        and attempt_id != payment.gateway_payment_id
    )


def late_refund_id(payment_id: str, attempt_id: str | None) -> str:
    """One refund per captured attempt, with an id derived from both: a second delivery of the same
    success finds the refund already recorded instead of refunding again."""
    digest = hashlib.sha256(f"{payment_id}:{attempt_id or ''}".encode()).hexdigest()[:8]
    return f"re_{payment_id.removeprefix('pay_')}_{digest}"[:40]


def late_refund_code(payment: Payment) -> str:
    if payment.status == _P.CAPTURED.value:
        return LATE_SUCCESS_REASON  # another attempt's capture on a payment captured already
    return EXPIRED_THEN_REFUNDED if payment.status == _P.EXPIRED.value else FAILED_THEN_REFUNDED


def is_late_refund(refund: Refund) -> bool:
    """A refund that gives back a late success: it reserved nothing and credits nothing back."""
    return refund.gateway_payment_id is not None


# --- refunds --------------------------------------------------------------------------------


def refunded_event(refund: Refund, at: datetime, payment: Payment | None) -> Event | None:
    # A refund of money that never credited the wallet (a late success: on a FAILED or EXPIRED
    # payment, or another attempt's capture, which is what sets the refund's own gateway_payment_id)
    # must not debit it either: no PAYMENT_REFUNDED for those.
    if payment is None or payment.status != _P.CAPTURED.value or refund.gateway_payment_id is not None:
        return None
    return Event(
        EventType.PAYMENT_REFUNDED,
        payment.id,
        payment.user_id,
        {
            "payment_id": payment.id,
            "user_id": payment.user_id,
            "refund_id": refund.id,
            "amount": refund.amount,
            "currency": refund.currency,
            "gateway": payment.gateway,
            "gateway_payment_id": payment.gateway_payment_id,
            "gateway_refund_id": refund.gateway_refund_id,
            "reason": refund.reason,
            "refunded_at": rfc3339(at),
            **canonical_data(refund),
        },
    )


_R = RefundStatus
REFUNDS: Lifecycle[Refund] = Lifecycle(
    kind=REFUND,
    statuses=tuple(s.value for s in RefundStatus),
    transitions={
        _R.SUCCEEDED.value: frozenset({_R.PENDING.value}),
        _R.FAILED.value: frozenset({_R.PENDING.value}),
    },
    open=frozenset({_R.PENDING.value}),
    outcomes={"pending": None, "succeeded": _R.SUCCEEDED.value, "failed": _R.FAILED.value},
    events={_R.SUCCEEDED.value: refunded_event},
)


# --- withdrawals ----------------------------------------------------------------------------


def withdrawal_event(w: Withdrawal, at: datetime, _: Any = None) -> Event:
    kind = {
        _W.SETTLED.value: EventType.WITHDRAWAL_SETTLED,
        _W.FAILED.value: EventType.WITHDRAWAL_FAILED,
        _W.REVERSED.value: EventType.WITHDRAWAL_REVERSED,
    }[w.status]
    data: dict[str, Any] = {
        "withdrawal_id": w.id,
        "user_id": w.user_id,
        "amount": w.amount,
        "currency": w.currency,
        "mode": w.mode,
        "beneficiary": w.beneficiary_summary(),  # name and last four digits, or the VPA; never the number
        "gateway_payout_id": w.gateway_payout_id,
        "utr": w.utr,
        f"{w.status.lower()}_at": rfc3339(at),
        **canonical_data(w),
    }
    if w.status != _W.SETTLED.value:
        data["failure_reason"] = w.failure_reason
    return Event(kind, w.id, w.user_id, data)


_W = WithdrawalStatus
WITHDRAWALS: Lifecycle[Withdrawal] = Lifecycle(
    kind=WITHDRAWAL,
    statuses=tuple(s.value for s in WithdrawalStatus),
    transitions={
        _W.PROCESSING.value: frozenset({_W.REQUESTED.value}),
        _W.SETTLED.value: frozenset({_W.PROCESSING.value}),
        _W.FAILED.value: frozenset({_W.REQUESTED.value, _W.PROCESSING.value}),
        _W.REVERSED.value: frozenset({_W.SETTLED.value}),
    },
    # REQUESTED: the payout may not have reached the gateway; PROCESSING: the bank has not answered.
    open=frozenset({_W.REQUESTED.value, _W.PROCESSING.value}),
    outcomes={
        "processing": _W.PROCESSING.value,
        "settled": _W.SETTLED.value,
        "failed": _W.FAILED.value,
        "reversed": _W.REVERSED.value,
    },
    events={_W.SETTLED.value: withdrawal_event, _W.FAILED.value: withdrawal_event, _W.REVERSED.value: withdrawal_event},
)

LIFECYCLES: Mapping[str, Lifecycle[Any]] = {PAYMENT: PAYMENTS, REFUND: REFUNDS, WITHDRAWAL: WITHDRAWALS}
