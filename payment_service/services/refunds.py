"""Refunds of captured payments.

The money rule: refunds of one payment never add up to more than it captured, even when sent
concurrently. So the amount is reserved in the database first (the payment's refunded_amount,
a guarded UPDATE under the payment's row lock) together with the PENDING refund, and committed;
only then is the gateway called, outside any transaction (DESIGN.md rule 2). The result is applied
through one guarded transition, whichever path brings it: the request itself, a retry with the
same Idempotency-Key, the worker's retry job, or a refund webhook. Only the path that moves the
refund PENDING -> SUCCEEDED writes PAYMENT_REFUNDED, so there is exactly one per refund.

Lock order, everywhere in this module: the payment row first, then its refund rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..domain.errors import GatewayUnavailable, NotFound, PaymentNotRefundable, RefundExceedsCaptured
from ..domain.events import Event, EventType, rfc3339, utcnow
from ..domain.model import REFUND_TRANSITIONS, PaymentStatus, RefundStatus
from ..domain.payments import Payment, Refund
from ..gateways.base import (
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    RefundResult,
    WebhookEvent,
    idempotency_key_for,
)
from ..gateways.base import RefundStatus as GatewayRefundStatus
from . import webhooks
from .unit_of_work import Clock, UowFactory

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class RefundPayment:
    payment_id: str
    refund_id: str  # allocated by the idempotency claim, so a retry resumes the same refund
    amount: int | None = None  # None: whatever is left to refund
    reason: str | None = None
    resumed: bool = True  # False only when the refund id is known to be brand new (saves a read)


def refunded_event(refund: Refund, payment: Payment, at: datetime) -> Event:
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
        },
    )


def gateway_key(refund_id: str) -> str:
    # From our own id only: a retry (request, worker) sends the same key, so the gateway refunds once.
    return idempotency_key_for(refund_id, "refund")


# --- the request ----------------------------------------------------------------------------


def refund_payment(
    cmd: RefundPayment, uow_factory: UowFactory, gateways: Mapping[str, Gateway], now: Clock = utcnow
) -> Refund:
    """Reserve, record, call the gateway, apply. Raises GatewayUnavailable when the outcome is unknown:
    the refund then stays PENDING, and a retry (same Idempotency-Key) or the worker finishes it."""
    if cmd.resumed:
        with uow_factory() as uow:
            existing = uow.refunds.get(cmd.refund_id)
            payment = uow.payments.get(existing.payment_id) if existing is not None else None
        if existing is not None:
            assert payment is not None
            if existing.status != RefundStatus.PENDING.value:
                return existing
            return _submit(existing, payment, uow_factory, gateways, now)
    refund, payment = _reserve(cmd, uow_factory, now)
    logger.info(
        "refund recorded",
        extra={"refund_id": refund.id, "payment_id": payment.id, "amount": refund.amount, "currency": refund.currency},
    )
    return _submit(refund, payment, uow_factory, gateways, now)


def _reserve(cmd: RefundPayment, uow_factory: UowFactory, now: Clock) -> tuple[Refund, Payment]:
    t = now()
    with uow_factory() as uow:
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
            id=cmd.refund_id,
            payment_id=payment.id,
            user_id=payment.user_id,
            amount=amount,
            currency=payment.currency,
            status=RefundStatus.PENDING.value,
            created_at=t,
            updated_at=t,
            reason=cmd.reason,
        )
        uow.refunds.add(refund)
        # Committed before the gateway is called: the amount is spoken for, whatever happens next.
        uow.commit()
    return refund, payment


def _submit(
    refund: Refund, payment: Payment, uow_factory: UowFactory, gateways: Mapping[str, Gateway], now: Clock
) -> Refund:
    if payment.gateway_payment_id is None:  # a CAPTURED payment always has one; be loud if not
        result = RefundResult("", GatewayRefundStatus.FAILED, refund.amount, "the payment has no gateway charge")
        return apply_refund_result(uow_factory, refund.id, result, now)
    try:
        result = gateways[payment.gateway].refund(
            payment.gateway_payment_id,
            refund.amount,
            refund.currency,
            reference=refund.id,
            idempotency_key=gateway_key(refund.id),
        )
    except GatewayUnavailableError as exc:
        logger.warning("gateway unavailable during refund", extra={"refund_id": refund.id, "error": str(exc)})
        raise GatewayUnavailable(
            f"{payment.gateway} did not answer; refund {refund.id} is pending and will be completed"
        ) from exc
    except GatewayError as exc:
        # A definite refusal (e.g. the gateway counts more refunded than we do): the refund failed and
        # its reserved amount is released.
        logger.warning("refund refused", extra={"refund_id": refund.id, "code": exc.code})
        result = RefundResult("", GatewayRefundStatus.FAILED, refund.amount, f"{exc.code}: {exc}"[:255])
    return apply_refund_result(uow_factory, refund.id, result, now)


# --- applying a result: shared by every path ------------------------------------------------


def apply_refund_result(uow_factory: UowFactory, refund_id: str, result: RefundResult, now: Clock = utcnow) -> Refund:
    """Apply what the gateway said; a no-op if another path already finished the refund."""
    t = now()
    with uow_factory() as uow:
        refund = uow.refunds.get(refund_id)
        if refund is None:
            raise NotFound(f"refund {refund_id} not found")
        ids = (
            {"gateway_refund_id": result.gateway_refund_id}
            if result.gateway_refund_id and refund.gateway_refund_id is None
            else {}
        )
        if refund.status != RefundStatus.PENDING.value:
            return refund  # finished already (webhook, worker, an earlier attempt)
        if result.status is GatewayRefundStatus.PENDING:
            # Still processing at the gateway: remember its id; touching updated_at spaces out the polls.
            uow.refunds.update(refund_id, **ids, updated_at=t)
            uow.commit()
            return Refund(**{**vars(refund), **ids, "updated_at": t})
        # Lock order: the payment row first, then the refund row (the guarded UPDATE below).
        payment = uow.payments.get(refund.payment_id, for_update=True)
        assert payment is not None
        if result.status is GatewayRefundStatus.SUCCEEDED:
            after = Refund(**{**vars(refund), **ids, "status": RefundStatus.SUCCEEDED.value, "updated_at": t})
            moved = uow.refunds.transition(
                refund_id, after.status, _allowed(RefundStatus.SUCCEEDED), **ids, updated_at=t
            )
            # A refund of an EXPIRED payment (late 3-D Secure success, see webhooks.refund_late_success)
            # never credited the wallet, so it must not debit it either: no event for those.
            if moved and payment.status == PaymentStatus.CAPTURED.value:
                uow.outbox.add(refunded_event(after, payment, t))
        else:
            reason = (result.failure_reason or "the gateway failed the refund")[:255]
            after = Refund(
                **{**vars(refund), **ids, "status": RefundStatus.FAILED.value, "failure_reason": reason,
                   "updated_at": t}
            )
            moved = uow.refunds.transition(
                refund_id, after.status, _allowed(RefundStatus.FAILED), **ids, failure_reason=reason, updated_at=t
            )
            if moved:
                uow.payments.release_refund(refund.payment_id, refund.amount, t)
        uow.commit()
    if moved:
        logger.info("refund finished", extra={"refund_id": refund_id, "status": after.status})
        return after
    with uow_factory() as uow:
        fresh = uow.refunds.get(refund_id)
    assert fresh is not None
    return fresh


def _allowed(new: RefundStatus) -> list[str]:
    return [s.value for s in REFUND_TRANSITIONS[new]]


# --- the worker's retry job -----------------------------------------------------------------


def retry_pending_refunds(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    older_than_seconds: int,
    now: Clock = utcnow,
    limit: int = 100,
) -> int:
    """Finish refunds left PENDING (gateway down or slow, a crash after the reservation): ask the gateway
    about those it knows, send again (same key) those it may never have seen. Returns how many finished."""
    with uow_factory() as uow:
        stuck = uow.refunds.stuck_pending(now() - timedelta(seconds=older_than_seconds), limit)
    finished = 0
    for refund in stuck:
        with uow_factory() as uow:
            payment = uow.payments.get(refund.payment_id)
        assert payment is not None
        try:
            if refund.gateway_refund_id:
                result = gateways[payment.gateway].retrieve_refund(refund.gateway_refund_id, payment.gateway_payment_id)
                after = apply_refund_result(uow_factory, refund.id, result, now)
            else:
                after = _submit(refund, payment, uow_factory, gateways, now)
        except (GatewayUnavailable, GatewayUnavailableError):
            continue  # next round
        except GatewayError as exc:
            logger.warning("refund retry failed", extra={"refund_id": refund.id, "error": str(exc)})
            continue
        finished += after.status != RefundStatus.PENDING.value
    return finished


# --- refund webhooks (registered with the inbox applier) ------------------------------------


def apply_refund_event(
    event: WebhookEvent, gateway: Gateway, uow_factory: UowFactory, now: Clock
) -> str | None:
    """Stripe refund.*, Razorpay refund.*: drive a PENDING refund to its final status. None: not a refund."""
    result = gateway.refund_result_from_event(event)
    if result is None:
        return None
    with uow_factory() as uow:
        refund = uow.refunds.get(event.reference) if event.reference else None
        if refund is None and result.gateway_refund_id:
            refund = uow.refunds.find_by_gateway_id(result.gateway_refund_id)
    if refund is None:
        # Ours but not committed yet (the late-3DS refund is recorded after the gateway call), or
        # someone else's: kept and retried, never dropped.
        raise webhooks.UnknownObject(f"no refund for reference={event.reference} gateway_id={result.gateway_refund_id}")
    if refund.status != RefundStatus.PENDING.value:
        return "IGNORED"
    after = apply_refund_result(uow_factory, refund.id, result, now)
    return "APPLIED" if after.status != refund.status else "IGNORED"


if apply_refund_event not in webhooks.EXTRA_HANDLERS:
    webhooks.EXTRA_HANDLERS.append(apply_refund_event)
