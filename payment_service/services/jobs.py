"""The worker's scheduled jobs: expire PENDING_3DS payments, reconcile stuck PENDING ones.

Gateway calls happen between units of work; each decision lands through a guarded transition,
so several workers running the same job at once do no harm: the first transition wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from ..domain.events import utcnow
from ..domain.model import PaymentStatus
from ..gateways.base import (
    ChargeResult,
    ChargeStatus,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    idempotency_key_for,
)
from .payments import PaymentSettings, apply_charge_result, move_payment
from .unit_of_work import UowFactory

logger = logging.getLogger(__name__)



def expire_pending_3ds(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    now: Callable[[], datetime] = utcnow,
    limit: int = 100,
) -> int:
    """Cancel at the gateway first; if the gateway took the money after all, capture instead."""
    with uow_factory() as uow:
        due = uow.payments.expired_3ds(now(), limit)
    expired = 0
    for payment in due:
        result = None
        if payment.gateway_payment_id:
            try:
                result = gateways[payment.gateway].cancel_charge(
                    payment.gateway_payment_id, idempotency_key=idempotency_key_for(payment.id, "cancel")
                )
            except GatewayUnavailableError:
                continue  # decide next round: expiring now could lose a late success
            except GatewayError as exc:
                logger.warning("cancel refused", extra={"payment_id": payment.id, "error": str(exc)})
                try:
                    result = gateways[payment.gateway].retrieve_charge(payment.gateway_payment_id)
                except GatewayError:
                    continue
        if result is not None and result.status is ChargeStatus.SUCCEEDED:
            apply_charge_result(uow_factory, payment.id, result, settings.pending_3ds_ttl_seconds, now)
            logger.info("3-D Secure payment succeeded at expiry", extra={"payment_id": payment.id})
            continue
        t = now()
        with uow_factory() as uow:
            moved = move_payment(
                uow,
                payment,
                PaymentStatus.EXPIRED,
                updated_at=t,
                next_action_url=None,
                failure_code="expired",
                failure_message="3-D Secure was not completed in time",
            )
            uow.commit()
        expired += moved is not None
    return expired


def reconcile_pending(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    older_than_seconds: int,
    now: Callable[[], datetime] = utcnow,
    limit: int = 100,
) -> int:
    """Ask the gateway, by our own id, what became of payments stuck in PENDING (a crash between
    the charge and our commit, a timeout); apply the answer. Returns how many were resolved."""
    with uow_factory() as uow:
        stuck = uow.payments.stuck_pending(now() - timedelta(seconds=older_than_seconds), limit)
    resolved = 0
    for payment in stuck:
        gateway = gateways[payment.gateway]
        result: ChargeResult | None
        try:
            if payment.gateway_payment_id:
                result = gateway.retrieve_charge(payment.gateway_payment_id)
            else:
                result = gateway.find_charge(payment.id)
        except GatewayUnavailableError:
            continue
        t = now()
        if result is None:
            # The gateway never saw the charge: the request died before it was sent.
            with uow_factory() as uow:
                moved = move_payment(
                    uow,
                    payment,
                    PaymentStatus.FAILED,
                    updated_at=t,
                    failure_code="not_submitted",
                    failure_message="the charge never reached the gateway",
                )
                uow.commit()
            resolved += moved is not None
            continue
        if result.status is ChargeStatus.PROCESSING:
            with uow_factory() as uow:
                gw = {"gateway_payment_id": result.gateway_payment_id} if result.gateway_payment_id else {}
                uow.payments.update(payment.id, updated_at=t, **gw)  # look again later, not every round
                uow.commit()
            continue
        after = apply_charge_result(uow_factory, payment.id, result, settings.pending_3ds_ttl_seconds, now)
        resolved += after.status != payment.status
        logger.info("reconciled", extra={"payment_id": payment.id, "status": after.status})
    return resolved
