"""Webhooks in: store verified events at once (the inbox), apply them later, in any order.

Applying goes through the same guarded transitions as the synchronous path, so a duplicate,
a late or a reordered event changes nothing it should not: a terminal payment never moves back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..domain.events import utcnow
from ..domain.payments import InboxEvent
from ..gateways.base import ChargeStatus, Gateway, GatewayUnavailableError, WebhookEvent
from .lifecycle import UnknownObject
from .payments import PaymentSettings, apply_charge_result
from .refunds import RefundSettings, apply_refund_event
from .unit_of_work import UowFactory
from .withdrawals import WithdrawalSettings, apply_payout_event

logger = logging.getLogger(__name__)


MAX_ATTEMPTS = 25  # with the backoff below: retried for about three hours, then kept as FAILED
LEASE_SECONDS = 60

__all__ = ["UnknownObject", "ApplySettings", "store_webhook", "apply_due_events", "apply_event"]


@dataclass(frozen=True)
class ApplySettings:
    """What applying an answer needs to know, per kind of record."""

    payments: PaymentSettings
    refunds: RefundSettings = RefundSettings()
    withdrawals: WithdrawalSettings = WithdrawalSettings()


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
    settings: ApplySettings,
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
    settings: ApplySettings,
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
    # Each handler answers None for an event that is not its kind; the first that answers wins.
    outcome = _apply_charge_event(event, gateway, uow_factory, now, settings.payments)
    if outcome is None:
        outcome = apply_refund_event(event, gateway, uow_factory, now, settings.refunds)
    if outcome is None:
        outcome = apply_payout_event(event, gateway, uow_factory, now, settings.withdrawals)
    return outcome or "IGNORED"  # a type we do not act on: recorded, answered 200, nothing else


def _apply_charge_event(
    event: WebhookEvent,
    gateway: Gateway,
    uow_factory: UowFactory,
    now: Callable[[], datetime],
    settings: PaymentSettings,
) -> str | None:
    charge = gateway.charge_result_from_event(event)
    if charge is None:
        return None
    if charge.status is ChargeStatus.PROCESSING:
        return "IGNORED"
    reference = charge.reference or event.reference
    with uow_factory() as uow:
        payment = uow.payments.get(reference) if reference else None
        if payment is None and charge.gateway_payment_id:
            payment = uow.payments.find_by_gateway_id(event.gateway, charge.gateway_payment_id)
        if payment is None or payment.gateway != event.gateway:
            raise UnknownObject(f"no payment for reference={reference} gateway_id={charge.gateway_payment_id}")
        before = (payment.status, payment.failure_code)
        after = apply_charge_result(uow, payment, charge, now(), settings)
        uow.commit()
    return "APPLIED" if (after.status, after.failure_code) != before else "IGNORED"
