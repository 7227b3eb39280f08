"""Webhooks in: store verified events at once (the inbox), apply them later, in any order.

Applying goes through the same guarded transitions as the synchronous path, so a duplicate,
a late or a reordered event changes nothing it should not: a terminal payment never moves back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from ..domain.events import utcnow
from ..domain.model import PaymentStatus
from ..domain.payments import InboxEvent, Payment, Refund
from ..gateways.base import (
    ChargeResult,
    ChargeStatus,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    RefundStatus,
    WebhookEvent,
    idempotency_key_for,
)
from .payments import PaymentSettings, apply_charge_result
from .unit_of_work import UowFactory

logger = logging.getLogger(__name__)


MAX_ATTEMPTS = 25  # with the backoff below: retried for about three hours, then kept as FAILED
LEASE_SECONDS = 60
LATE_REFUND_CODE = "expired_then_refunded"


class UnknownObject(Exception):
    """The event is about something we have not recorded (yet): retry later, never drop."""


def store_webhook(
    event: WebhookEvent, uow_factory: UowFactory, now: Callable[[], datetime] = utcnow, raw: str | None = None
) -> bool:
    """Keep a verified event durably (its raw body, as received); False for a duplicate delivery."""
    t = now()
    inbox = InboxEvent(
        id=0,
        gateway=event.gateway,
        gateway_event_id=event.event_id,
        event_type=event.type[:64],
        payload=raw if raw is not None else json.dumps(event.payload, separators=(",", ":")),
        status="RECEIVED",
        attempts=0,
        next_attempt_at=t,
        received_at=t,
        object_id=(event.object_id or "")[:64] or None,
        reference=(event.reference or "")[:40] or None,
    )
    with uow_factory() as uow:
        stored = uow.gateway_events.add(inbox)
        uow.commit()
    return stored


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2 ** max(attempts, 1), 600))


def apply_due_events(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    now: Callable[[], datetime] = utcnow,
    limit: int = 50,
) -> int:
    """Apply the inbox's due events; returns how many this call handled. Safe with N workers."""
    with uow_factory() as uow:
        due = uow.gateway_events.due(now(), limit)
    handled = 0
    for inbox in due:
        t = now()
        with uow_factory() as uow:
            # A conditional UPDATE: of several workers only one gets each event.
            claimed = uow.gateway_events.claim(inbox.id, t, t + timedelta(seconds=LEASE_SECONDS))
            uow.commit()
        if not claimed:
            continue
        handled += 1
        attempts = inbox.attempts + 1
        try:
            outcome = apply_event(inbox, uow_factory, gateways, settings, now)
        except (UnknownObject, GatewayUnavailableError) as exc:
            _retry_or_give_up(uow_factory, inbox, attempts, str(exc), now)
            continue
        except Exception as exc:  # noqa: BLE001 - keep the error on the row (dj-stripe), retry later
            logger.exception("webhook apply failed", extra={"gateway_event_id": inbox.gateway_event_id})
            _retry_or_give_up(uow_factory, inbox, attempts, f"{type(exc).__name__}: {exc}", now)
            continue
        with uow_factory() as uow:
            uow.gateway_events.finish(inbox.id, outcome, now())
            uow.commit()
        logger.info(
            "webhook applied",
            extra={
                "gateway": inbox.gateway,
                "gateway_event_id": inbox.gateway_event_id,
                "type": inbox.event_type,
                "outcome": outcome,
            },
        )
    return handled


def _retry_or_give_up(
    uow_factory: UowFactory, inbox: InboxEvent, attempts: int, error: str, now: Callable[[], datetime]
) -> None:
    with uow_factory() as uow:
        if attempts >= MAX_ATTEMPTS:
            # Kept, with its error, for an operator: never deleted.
            uow.gateway_events.finish(inbox.id, "FAILED", now(), error[:2000])
        else:
            uow.gateway_events.retry_later(inbox.id, now() + backoff(attempts), error)
        uow.commit()


def apply_event(
    inbox: InboxEvent,
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    now: Callable[[], datetime] = utcnow,
) -> str:
    """Apply one stored event; returns APPLIED (something moved) or IGNORED (nothing to do)."""
    gateway = gateways[inbox.gateway]
    event = WebhookEvent(
        inbox.gateway,
        inbox.gateway_event_id,
        inbox.event_type,
        inbox.object_id,
        inbox.reference,
        json.loads(inbox.payload),
    )
    charge = gateway.charge_result_from_event(event)
    if charge is not None:
        return _apply_charge_event(inbox, charge, uow_factory, gateway, settings, now)
    for handler in EXTRA_HANDLERS:
        outcome = handler(event, gateway, uow_factory, now)
        if outcome is not None:
            return outcome
    return "IGNORED"  # a type we do not act on: recorded, answered 200, nothing else


# Later features (refunds, payouts) register handlers: (event, gateway, uow_factory, now) -> outcome | None.
EXTRA_HANDLERS: list[Callable[[WebhookEvent, Gateway, UowFactory, Callable[[], datetime]], str | None]] = []


def _find_payment(uow_factory: UowFactory, gateway: str, reference: str | None, gateway_id: str | None) -> Payment:
    with uow_factory() as uow:
        payment = uow.payments.get(reference) if reference else None
        if payment is None and gateway_id:
            payment = uow.payments.find_by_gateway_id(gateway, gateway_id)
    if payment is None or payment.gateway != gateway:
        raise UnknownObject(f"no payment for reference={reference} gateway_id={gateway_id}")
    return payment


def _apply_charge_event(
    inbox: InboxEvent,
    charge: ChargeResult,
    uow_factory: UowFactory,
    gateway: Gateway,
    settings: PaymentSettings,
    now: Callable[[], datetime],
) -> str:
    payment = _find_payment(uow_factory, inbox.gateway, charge.reference or inbox.reference, charge.gateway_payment_id)
    if payment.status == PaymentStatus.EXPIRED and charge.status is ChargeStatus.SUCCEEDED:
        return refund_late_success(payment, charge, uow_factory, gateway, now)
    if charge.status is ChargeStatus.PROCESSING:
        return "IGNORED"
    after = apply_charge_result(uow_factory, payment.id, charge, settings.pending_3ds_ttl_seconds, now)
    return "APPLIED" if after.status != payment.status else "IGNORED"


def refund_late_success(
    payment: Payment, charge: ChargeResult, uow_factory: UowFactory, gateway: Gateway, now: Callable[[], datetime]
) -> str:
    """The customer finished 3-D Secure after we expired the payment: give the money back."""
    if payment.failure_code == LATE_REFUND_CODE:
        return "IGNORED"  # refunded already (a duplicate or a second success event)
    gateway_id = charge.gateway_payment_id or payment.gateway_payment_id
    assert gateway_id is not None
    # Deterministic ids: a retry after a crash refunds with the same key, so never twice.
    refund_id = "re_" + payment.id.removeprefix("pay_") + "x"
    try:
        result = gateway.refund(
            gateway_id,
            payment.amount,
            payment.currency,
            reference=refund_id,
            idempotency_key=idempotency_key_for(payment.id, "late_refund"),
        )
    except GatewayError as exc:
        if isinstance(exc, GatewayUnavailableError) or exc.code != "refund_exceeds_captured":
            raise
        result = None  # refunded already at the gateway by an earlier attempt
    t = now()
    with uow_factory() as uow:
        uow.payments.update(
            payment.id,
            failure_code=LATE_REFUND_CODE,
            gateway_payment_id=gateway_id,
            failure_message="3-D Secure completed after the payment expired; refunded in full",
            refunded_amount=payment.amount,
            updated_at=t,
        )
        if result is not None and uow.refunds.get(refund_id) is None:
            uow.refunds.add(
                Refund(
                    id=refund_id,
                    payment_id=payment.id,
                    user_id=payment.user_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    status="SUCCEEDED" if result.status is RefundStatus.SUCCEEDED else "PENDING",
                    created_at=t,
                    updated_at=t,
                    reason="expired_then_refunded",
                    gateway_refund_id=result.gateway_refund_id,
                )
            )
        uow.commit()
    logger.warning("late 3-D Secure success refunded", extra={"payment_id": payment.id, "gateway": payment.gateway})
    return "APPLIED"
