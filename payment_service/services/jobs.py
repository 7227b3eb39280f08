"""The payment sweeps: expire PENDING_3DS payments, reconcile stuck PENDING ones.

Each is a `sweep` (services/lifecycle.py): a batch claimed in one statement, so several workers
never look at the same payment, and a request that holds a payment (its gateway call in flight) is
never looked at; each payment is handled on its own, and one that fails keeps its error and backs
off without stopping the others. Every answer lands through `apply_charge_result`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

from ..domain import lifecycle
from ..domain.events import utcnow
from ..domain.lifecycle import PAYMENTS
from ..domain.model import PaymentStatus
from ..domain.payments import Payment
from ..gateways.base import ChargeResult, ChargeStatus, Gateway, GatewayUnavailableError, idempotency_key_for
from .lifecycle import DEFAULT_POLICY, Stop, SweepPolicy, SweepReport, sweep, walk
from .payments import PaymentSettings, apply_charge_result, charge, charge_request, expire
from .unit_of_work import Clock, UowFactory

logger = logging.getLogger(__name__)


def expire_pending_3ds(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    now: Clock = utcnow,
    policy: SweepPolicy = DEFAULT_POLICY,
    stop: Stop | None = None,
) -> SweepReport:
    """PENDING_3DS payments past their expiry: cancel at the gateway first; if the gateway took the
    money after all, capture instead. A gateway that does not answer leaves the payment for the next
    round: expiring now could lose a late success."""

    def handle(payment: Payment) -> Payment:
        result: ChargeResult | None = None
        if payment.gateway_payment_id:
            gateway = gateways[payment.gateway]
            try:
                result = gateway.cancel_charge(
                    payment.gateway_payment_id, idempotency_key=idempotency_key_for(payment.id, "cancel")
                )
            except GatewayUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - a refused cancel: ask what the charge became
                logger.warning("cancel refused", extra={"payment_id": payment.id, "error": str(exc)[:200]})
                result = gateway.retrieve_charge(payment.gateway_payment_id)
        t = now()
        with uow_factory() as uow:
            if result is not None and result.status is ChargeStatus.SUCCEEDED:
                logger.info("3-D Secure payment succeeded at expiry", extra={"payment_id": payment.id})
                after = apply_charge_result(uow, payment, result, t, settings)
            else:
                after = expire(uow, payment, t)
            uow.commit()
        return after

    return sweep("expire_pending_3ds", uow_factory, lifecycle.PAYMENT, {PaymentStatus.PENDING_3DS.value},
                 handle, now, policy, stop)


def reconcile_pending(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    now: Clock = utcnow,
    policy: SweepPolicy = DEFAULT_POLICY,
    stop: Stop | None = None,
) -> SweepReport:
    """Resolve payments left PENDING (a crash between the charge and our commit, a timeout).

    A lookup that finds nothing proves nothing while the gateway's idempotency key can still replay
    (rule 8): Stripe's search lags by up to a minute (hours in an outage), and the charge may be on
    its way. So within the replay window the charge itself is replayed with the same key, which
    returns the original outcome or makes the charge once; only past it does a lookup that finds
    nothing mean "never submitted"."""

    def handle(payment: Payment) -> Payment:
        gateway = gateways[payment.gateway]
        t = now()
        replayable = payment.created_at > t - timedelta(seconds=settings.replay_window_seconds)
        result: ChargeResult | None
        if payment.gateway_payment_id:
            result = gateway.retrieve_charge(payment.gateway_payment_id)
        elif replayable and payment.gateway_token:
            with uow_factory() as uow:
                method = uow.payment_methods.get(payment.payment_method_id) if payment.payment_method_id else None
            result = charge(gateway, charge_request(payment, method))
        else:
            result = gateway.find_charge(payment.id)
        with uow_factory() as uow:
            if result is None:
                # Past the replay window and unknown to the gateway: the request died before it was sent.
                after = walk(
                    uow, PAYMENTS, payment, PaymentStatus.FAILED.value, now(),
                    failure_code=lifecycle.NOT_SUBMITTED, failure_message="the charge never reached the gateway",
                )[0]
            else:
                after = apply_charge_result(uow, payment, result, now(), settings)
                if after.status == PaymentStatus.PENDING.value:  # processing: look again later, not every round
                    uow.records.release(
                        lifecycle.PAYMENT, payment.id, count_attempt=False,
                        next_attempt_at=now() + timedelta(seconds=settings.reconcile_after_seconds),
                    )
            uow.commit()
        logger.info("reconciled", extra={"payment_id": payment.id, "status": after.status})
        return after

    return sweep("reconcile_pending", uow_factory, lifecycle.PAYMENT, {PaymentStatus.PENDING.value},
                 handle, now, policy, stop)
