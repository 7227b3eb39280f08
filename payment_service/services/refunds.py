"""Refunds of captured payments, and of late successes (domain/lifecycle.py).

The money rule: refunds of one payment never add up to more than it captured, even when sent
concurrently. So phase 1 of the keyed request reserves the amount (the payment's refunded_amount,
a guarded UPDATE under the payment's row lock) together with the PENDING refund, claimed by the
request; the gateway is called outside any transaction; the answer lands through
`apply_refund_result`, which the refund webhooks and the refund sweep use too. Only the move
PENDING -> SUCCEEDED writes PAYMENT_REFUNDED, so there is exactly one per refund (and none for a
late success, which never credited the wallet).

Lock order, everywhere in this module: the payment row first, then its refund rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..domain import fx, ids, lifecycle
from ..domain.errors import DomainError, GatewayUnavailable, NotFound, PaymentNotRefundable, RefundExceedsCaptured
from ..domain.events import utcnow
from ..domain.lifecycle import REFUNDS
from ..domain.model import PaymentStatus, RefundStatus
from ..domain.payments import Payment, Refund
from ..gateways.base import (
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    RefundResult,
    idempotency_key_for,
)
from ..gateways.base import RefundStatus as GatewayRefundStatus
from .lifecycle import DEFAULT_POLICY, Stop, SweepPolicy, SweepReport, sweep, walk
from .unit_of_work import AbstractUnitOfWork, Clock, UowFactory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefundPayment:
    payment_id: str
    amount: int | None = None  # None: whatever is left to refund
    reason: str | None = None


@dataclass(frozen=True)
class RefundSettings:
    retry_after_seconds: int = 60  # a PENDING refund is asked about (or sent again) after this
    canonical: fx.Canonicalizer = fx.no_canonical  # the amount in CANONICAL_CURRENCY (never waits)


def gateway_key(refund_id: str) -> str:
    # From our own id only: a retry (request, sweep) sends the same key, so the gateway refunds once.
    return idempotency_key_for(refund_id, "refund")


# --- applying an answer: shared by every path ---------------------------------------------------


def apply_refund_result(
    uow: AbstractUnitOfWork, refund: Refund, result: RefundResult, at: datetime, settings: RefundSettings
) -> Refund:
    """Land what the gateway said about a refund, inside the caller's unit of work."""
    refs = (
        {"gateway_refund_id": result.gateway_refund_id}
        if result.gateway_refund_id and refund.gateway_refund_id is None
        else {}
    )
    target = REFUNDS.target_for(result.status.value)
    if target is None:
        # Still processing at the gateway: remember its id and let the sweep ask again later.
        if refs:
            uow.records.update(lifecycle.REFUND, refund.id, **refs, updated_at=at)
        uow.records.release(
            lifecycle.REFUND, refund.id, next_attempt_at=at + timedelta(seconds=settings.retry_after_seconds),
            count_attempt=False,
        )
        return Refund(**{**vars(refund), **refs, "claimed_until": None})
    # Lock order: the payment row first (a failed refund gives its reservation back), then the refund.
    payment = uow.payments.get(refund.payment_id, for_update=target == RefundStatus.FAILED.value)
    assert payment is not None
    changes: dict[str, object] = dict(refs)
    if target == RefundStatus.FAILED.value:
        changes["failure_reason"] = (result.failure_reason or "the gateway failed the refund")[:255]
    after, moved = walk(uow, REFUNDS, refund, target, at, payment, **changes)
    late = lifecycle.is_late_refund(refund)
    if moved and target == RefundStatus.FAILED.value and not late:
        uow.payments.release_refund(refund.payment_id, refund.amount, at)  # only what it reserved
    if moved:
        logger.info("refund finished", extra={"refund_id": refund.id, "status": after.status})
        if target == RefundStatus.FAILED.value and late:
            # The money of a late success is still with us: an operator must look (rule 8).
            logger.error("late-success refund failed", extra={"refund_id": refund.id, "payment_id": payment.id})
    return after


def send_refund(gateway: Gateway, refund: Refund, payment: Payment) -> RefundResult:
    """Ask the gateway for the refund (same key on every call). A definite refusal is a FAILED answer."""
    charge_id = refund.gateway_payment_id or payment.gateway_payment_id
    if charge_id is None:  # a captured payment always has one; be loud if not
        return RefundResult("", GatewayRefundStatus.FAILED, refund.amount, "the payment has no gateway charge")
    try:
        return gateway.refund(
            charge_id, refund.amount, refund.currency, reference=refund.id, idempotency_key=gateway_key(refund.id)
        )
    except GatewayUnavailableError:
        raise
    except GatewayError as exc:
        # A definite refusal (e.g. the gateway counts more refunded than we do): the refund failed and
        # its reserved amount is released.
        logger.warning("refund refused", extra={"refund_id": refund.id, "code": exc.code})
        return RefundResult("", GatewayRefundStatus.FAILED, refund.amount, f"{exc.code}: {exc}"[:255])


# --- the request ----------------------------------------------------------------------------------


class RefundFlow:
    """A refund as a keyed request (services/idempotency.Flow)."""

    kind = lifecycle.REFUND
    prefix = ids.REFUND

    def __init__(self, cmd: RefundPayment, gateways: Mapping[str, Gateway], settings: RefundSettings) -> None:
        self.cmd = cmd
        self.gateways = gateways
        self.settings = settings
        self.payment: Payment | None = None

    def create(self, uow: AbstractUnitOfWork, record_id: str, t: datetime, claimed_until: datetime) -> Refund:
        cmd = self.cmd
        # SELECT ... FOR UPDATE on the payment row (lock order: payment, then refunds): concurrent
        # refunds of one payment queue here, so the remainder read below is the one the guarded
        # UPDATE checks. The guard alone would already keep the total within the captured amount.
        payment = uow.payments.get(cmd.payment_id, for_update=True)
        if payment is None:
            raise NotFound(f"payment {cmd.payment_id} not found")
        if payment.status != PaymentStatus.CAPTURED.value:
            raise PaymentNotRefundable(
                f"payment {payment.id} is {payment.status}; only CAPTURED payments can be refunded"
            )
        remaining = payment.amount - payment.refunded_amount
        amount = remaining if cmd.amount is None else cmd.amount
        if remaining <= 0 or amount > remaining or amount <= 0:
            raise RefundExceedsCaptured(
                f"{remaining} of {payment.amount} {payment.currency} is left to refund on payment {payment.id}",
                field="amount",
            )
        if not uow.payments.reserve_refund(payment.id, amount, t):
            raise RefundExceedsCaptured(f"payment {payment.id} has no {amount} left to refund", field="amount")
        refund = Refund(
            id=record_id,
            payment_id=payment.id,
            user_id=payment.user_id,
            amount=amount,
            currency=payment.currency,
            status=RefundStatus.PENDING.value,
            created_at=t,
            updated_at=t,
            reason=cmd.reason,
            claimed_until=claimed_until,
            next_attempt_at=self.retry_at(t),
            **fx.canonical_fields(self.settings.canonical(amount, payment.currency, t)),
        )
        uow.refunds.add(refund)
        self.payment = payment
        logger.info(
            "refund recorded",
            extra={"refund_id": refund.id, "payment_id": payment.id, "amount": amount, "currency": refund.currency},
        )
        return refund

    def resume(self, uow: AbstractUnitOfWork, record: Refund) -> None:
        self.payment = uow.payments.get(record.payment_id)

    def needs_call(self, record: Refund) -> bool:
        return record.status == RefundStatus.PENDING.value

    def call(self, record: Refund) -> RefundResult:
        assert self.payment is not None
        return send_refund(self.gateways[self.payment.gateway], record, self.payment)

    def apply(self, uow: AbstractUnitOfWork, record: Refund, answer: RefundResult, t: datetime) -> Refund:
        return apply_refund_result(uow, record, answer, t, self.settings)

    def unavailable(self, record: Refund) -> DomainError:
        gateway = self.payment.gateway if self.payment else "the gateway"
        return GatewayUnavailable(f"{gateway} did not answer; refund {record.id} is pending and will be completed")

    def retry_at(self, t: datetime) -> datetime:
        return t + timedelta(seconds=self.settings.retry_after_seconds)


# --- the sweep ----------------------------------------------------------------------------------


def retry_pending_refunds(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: RefundSettings,
    now: Clock = utcnow,
    policy: SweepPolicy = DEFAULT_POLICY,
    stop: Stop | None = None,
) -> SweepReport:
    """Finish refunds left PENDING (gateway down or slow, a crash, a late success to give back): ask
    the gateway about those it knows, send again (same key) those it may never have seen."""

    def handle(refund: Refund) -> Refund:
        with uow_factory() as uow:
            payment = uow.payments.get(refund.payment_id)
        assert payment is not None
        gateway = gateways[payment.gateway]
        if refund.gateway_refund_id:
            result = gateway.retrieve_refund(
                refund.gateway_refund_id, refund.gateway_payment_id or payment.gateway_payment_id
            )
        else:
            result = send_refund(gateway, refund, payment)
        with uow_factory() as uow:
            after = apply_refund_result(uow, refund, result, now(), settings)
            uow.commit()
        return after

    return sweep("refunds", uow_factory, lifecycle.REFUND, {RefundStatus.PENDING.value}, handle, now, policy,
                 stop)


# --- refund webhooks ------------------------------------------------------------------------------


def apply_refund_event(
    uow: AbstractUnitOfWork, refund: Refund, result: RefundResult, at: datetime, settings: RefundSettings
) -> bool:
    """Stripe refund.*, Razorpay refund.*: drive a PENDING refund to its final status, inside the
    caller's unit of work (the webhook applier's). True if the refund moved."""
    if refund.status != RefundStatus.PENDING.value or result.status is GatewayRefundStatus.PENDING:
        return False
    after = apply_refund_result(uow, refund, result, at, settings)
    return after.status != refund.status
