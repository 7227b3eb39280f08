"""Top-ups, saved payment methods and reads.

A top-up is a keyed request in atomic phases (services/idempotency.py): the key, the fraud
pre-check and the PENDING payment, claimed by the request, commit together; the gateway is called
outside any transaction; the answer lands through `apply_charge_result`, which the webhook applier
and every sweep use too, with the stored response, in one transaction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..domain import fx, ids, lifecycle
from ..domain.breaker import CircuitBreaker
from ..domain.errors import DomainError, GatewayUnavailable, NotFound, ValidationFailed
from ..domain.events import utcnow
from ..domain.lifecycle import PAYMENTS, payment_failed_event
from ..domain.model import PaymentStatus
from ..domain.payments import Payment, PaymentMethod, Refund
from ..gateways.base import (
    CardDetails,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    SavedMethod,
    idempotency_key_for,
)
from .lifecycle import walk
from .risk import RiskAction, RiskDecision, RiskFacts, RiskRules, assess
from .unit_of_work import AbstractUnitOfWork, Clock, UowFactory

logger = logging.getLogger(__name__)


FRAUD_FAILURE_CODE = "fraud_suspected"


@dataclass(frozen=True)
class TopUp:
    user_id: str
    amount: int
    currency: str
    gateway: str | None = None
    token: str | None = None
    payment_method_id: str | None = None
    return_url: str | None = None
    device_id: str | None = None
    device_ip: str | None = None


@dataclass(frozen=True)
class PaymentSettings:
    rules: RiskRules
    pending_3ds_ttl_seconds: int = 900
    reconcile_after_seconds: int = 180  # a PENDING payment nobody answered is first looked at after this
    # While the gateway's idempotency key can still replay the original call (Stripe keeps keys 24 h),
    # a stuck payment is resolved by replaying the charge, never by a lookup that found nothing.
    replay_window_seconds: int = 23 * 3600
    canonical: fx.Canonicalizer = fx.no_canonical  # the amount in CANONICAL_CURRENCY (never waits)


# --- applying a gateway's answer: the one function every path uses ----------------------------


def apply_charge_result(
    uow: AbstractUnitOfWork, payment: Payment, result: ChargeResult, at: datetime, settings: PaymentSettings
) -> Payment:
    """Land what the gateway said about a charge on the payment, inside the caller's unit of work.

    `payment` may be the copy the caller holds: the moves are guarded and re-read on a mismatch.
    A failure of a superseded attempt is ignored; a success that no move can record (the payment
    is closed, or another attempt captured it) is given back by a refund recorded here (rule 8).
    """
    attempt = result.gateway_payment_id
    target = PAYMENTS.target_for(result.status.value)
    # The attempt that captures (or now waits for 3-D Secure) is the payment's charge from here on:
    # a refund goes to it, and a success of any other attempt is a late success.
    gw_id = {"gateway_payment_id": attempt} if attempt else {}
    card = result.card
    card_changes = (
        {"card_brand": card.brand, "card_last4": card.last4, "card_country": card.country} if card else {}
    )
    if target is None:  # processing: no move yet; remember the gateway's id and look again later
        if gw_id and payment.gateway_payment_id is None:
            uow.records.update(lifecycle.PAYMENT, payment.id, **gw_id, updated_at=at)
        return payment
    if target == PaymentStatus.FAILED.value and not lifecycle.failure_applies(payment, attempt):
        logger.info(
            "failure of a superseded attempt ignored",
            extra={"payment_id": payment.id, "attempt": attempt, "current_attempt": payment.gateway_payment_id},
        )
        return payment
    if target == PaymentStatus.CAPTURED.value:
        after, moved = _walk(uow, payment, target, at, {**gw_id, **card_changes, "captured_at": at,
                                                        "next_action_url": None})
        if not moved and lifecycle.is_late_success(after, attempt):
            after = record_late_refund(uow, after, result, at, settings)
        return after
    if result.status is ChargeStatus.CANCELED and lifecycle.cancel_is_expiry(payment, at):
        return expire(uow, payment, at)
    if target == PaymentStatus.PENDING_3DS.value:
        expires = at + timedelta(seconds=settings.pending_3ds_ttl_seconds)
        changes = {**gw_id, **card_changes, "next_action_url": result.redirect_url, "expires_at": expires,
                   "next_attempt_at": expires}
        return _walk(uow, payment, target, at, changes)[0]
    changes = {
        **gw_id,
        **card_changes,
        "failure_code": result.failure_code or "payment_failed",
        "failure_message": (result.failure_message or "the payment failed")[:255],
        "next_action_url": None,
    }
    return _walk(uow, payment, target, at, changes)[0]


def expire(uow: AbstractUnitOfWork, payment: Payment, at: datetime) -> Payment:
    """The 3-D Secure wait ran out: EXPIRED (once, whether the expiry sweep or the webhook about its
    cancel lands it)."""
    return _walk(uow, payment, PaymentStatus.EXPIRED.value, at, {
        "next_action_url": None, "failure_code": "expired", "failure_message": "3-D Secure was not completed in time",
    })[0]


def _walk(
    uow: AbstractUnitOfWork, payment: Payment, target: str, at: datetime, changes: Mapping[str, object]
) -> tuple[Payment, bool]:
    return walk(uow, PAYMENTS, payment, target, at, **changes)


def record_late_refund(
    uow: AbstractUnitOfWork, payment: Payment, result: ChargeResult, at: datetime,
    settings: PaymentSettings | None = None,
) -> Payment:
    """Money the gateway took for a payment we cannot capture goes back: a PENDING refund of the
    captured attempt, due at once, which the refund sweep sends and retries until it is done."""
    attempt = result.gateway_payment_id or payment.gateway_payment_id
    refund_id = lifecycle.late_refund_id(payment.id, attempt)
    if uow.refunds.get(refund_id) is not None:
        return payment  # recorded already: a duplicate delivery of the same success
    code = lifecycle.late_refund_code(payment)
    amount = result.amount or payment.amount
    canonical = settings.canonical if settings is not None else fx.no_canonical
    uow.refunds.add(
        Refund(
            id=refund_id, payment_id=payment.id, user_id=payment.user_id, amount=amount, currency=payment.currency,
            status="PENDING", created_at=at, updated_at=at, reason=code, gateway_payment_id=attempt,
            next_attempt_at=at, **fx.canonical_fields(canonical(amount, payment.currency, at)),
        )
    )
    changes: dict[str, object] = {"updated_at": at}
    if payment.status != PaymentStatus.CAPTURED.value:
        changes.update(
            failure_code=code,
            failure_message="the gateway took the money after the payment was closed; refunded in full",
            refunded_amount=payment.amount,
        )
        if payment.gateway_payment_id is None:
            changes["gateway_payment_id"] = attempt
    uow.records.update(lifecycle.PAYMENT, payment.id, **changes)
    logger.warning(
        "late success refunded",
        extra={"payment_id": payment.id, "status": payment.status, "attempt": attempt, "refund_id": refund_id,
               "gateway": payment.gateway, "metric": "late_success_refunds"},
    )
    after = uow.payments.get(payment.id)
    assert after is not None
    return after


# --- top-up -------------------------------------------------------------------------------


def charge_request(payment: Payment, method: PaymentMethod | None, token: str | None = None) -> ChargeRequest:
    """The charge for a payment, the same on every call: the gateway key derives from our id, so a
    replay (a retried request, reconciliation) charges at most once and returns the first outcome."""
    return ChargeRequest(
        reference=payment.id,
        amount=payment.amount,
        currency=payment.currency,
        idempotency_key=idempotency_key_for(payment.id, "charge"),
        token=method.gateway_token if method else (token or payment.gateway_token or ""),
        customer_ref=method.gateway_customer_ref if method else None,
        return_url=payment.return_url,
        description=f"Wallet top-up {payment.id}",
        metadata={"payment_id": payment.id, "user_id": payment.user_id},
        request_three_d_secure=payment.risk_decision == RiskAction.REQUIRE_3DS.value,
    )


def charge(gateway: Gateway, request: ChargeRequest) -> ChargeResult:
    """Call the gateway; a definite refusal is a FAILED answer. GatewayUnavailableError passes through."""
    try:
        return gateway.charge(request)
    except GatewayUnavailableError:
        raise
    except GatewayError as exc:
        return ChargeResult(ChargeStatus.FAILED, None, failure_code=exc.code, failure_message=str(exc))


class TopUpFlow:
    """The top-up as a keyed request (services/idempotency.Flow)."""

    kind = lifecycle.PAYMENT
    prefix = ids.PAYMENT

    def __init__(
        self,
        cmd: TopUp,
        gateways: Mapping[str, Gateway],
        settings: PaymentSettings,
        breakers: Mapping[str, CircuitBreaker] | None = None,
    ) -> None:
        self.cmd = cmd
        self.gateways = gateways
        self.settings = settings
        self.breakers = breakers or {}
        self.method: PaymentMethod | None = None

    def create(self, uow: AbstractUnitOfWork, record_id: str, t: datetime, claimed_until: datetime) -> Payment:
        cmd = self.cmd
        self.method = method = _saved_method(uow, cmd.payment_method_id, cmd.user_id)
        gateway_name = method.gateway if method is not None else cmd.gateway
        if gateway_name is None or gateway_name not in self.gateways:
            raise ValidationFailed(f"gateway must be one of {sorted(self.gateways)}", field="gateway")
        self._refuse_if_open(gateway_name)
        window = t - timedelta(seconds=self.settings.rules.velocity_window_seconds)
        attempts, amount = uow.payments.velocity(cmd.user_id, window)
        device_known = bool(cmd.device_id) and uow.payments.device_seen(cmd.user_id, str(cmd.device_id))
        decision = assess(
            RiskFacts(
                amount=cmd.amount,
                attempts_in_window=attempts,
                amount_in_window=amount,
                device_id=cmd.device_id,
                device_known=device_known,
                card_iin=method.iin if method else None,
                card_country=method.country if method else None,
            ),
            self.settings.rules,
        )
        payment = _new_payment(cmd, record_id, gateway_name, method, decision, t)
        payment = replace(payment, **fx.canonical_fields(self.settings.canonical(cmd.amount, cmd.currency, t)))
        if not decision.refused:
            payment.claimed_until = claimed_until
            payment.next_attempt_at = t + timedelta(seconds=self.settings.reconcile_after_seconds)
        uow.payments.add(payment)
        if decision.refused:
            uow.outbox.add(payment_failed_event(payment))
        logger.info(
            "top-up recorded",
            extra={
                "payment_id": payment.id,
                "user_id": cmd.user_id,
                "amount": cmd.amount,
                "currency": cmd.currency,
                "gateway": gateway_name,
                "risk": decision.action.value,
                "risk_reasons": list(decision.reasons),
            },
        )
        return payment

    def resume(self, uow: AbstractUnitOfWork, record: Payment) -> None:
        self.method = _saved_method(uow, record.payment_method_id, record.user_id)

    def needs_call(self, record: Payment) -> bool:
        return record.status == PaymentStatus.PENDING.value

    def call(self, record: Payment) -> ChargeResult:
        return charge(self.gateways[record.gateway], charge_request(record, self.method, self.cmd.token))

    def apply(self, uow: AbstractUnitOfWork, record: Payment, answer: ChargeResult, t: datetime) -> Payment:
        after = apply_charge_result(uow, record, answer, t, self.settings)
        if after.status == PaymentStatus.PENDING.value:
            # Still processing at the gateway: the reconciliation sweep asks again later.
            uow.records.release(
                lifecycle.PAYMENT, record.id, next_attempt_at=self.retry_at(t), count_attempt=False
            )
        return after

    def unavailable(self, record: Payment) -> DomainError:
        return GatewayUnavailable(
            f"{record.gateway} did not answer; payment {record.id} is pending and will be resolved",
            retry_after=self._retry_after(record.gateway),
        )

    def _refuse_if_open(self, gateway: str) -> None:
        """A gateway whose breaker is open is not even asked: the refusal rolls phase 1 back, so nothing
        is recorded (the key included) and nothing is charged. A retry with the same key is a new
        request. Half-open, one top-up at a time goes through as the probe."""
        wait = self._retry_after(gateway)
        if wait:
            raise GatewayUnavailable(
                f"{gateway} is failing; no payment was made. Retry after {math.ceil(wait)} s", retry_after=wait
            )

    def _retry_after(self, gateway: str) -> float | None:
        breaker = self.breakers.get(gateway)
        return (breaker.retry_after() or None) if breaker is not None else None

    def retry_at(self, t: datetime) -> datetime:
        return t + timedelta(seconds=self.settings.reconcile_after_seconds)


def _new_payment(
    cmd: TopUp, payment_id: str, gateway: str, method: PaymentMethod | None, decision: RiskDecision, t: datetime
) -> Payment:
    refused = decision.refused
    return Payment(
        id=payment_id,
        user_id=cmd.user_id,
        amount=cmd.amount,
        currency=cmd.currency,
        gateway=gateway,
        status=PaymentStatus.FAILED.value if refused else PaymentStatus.PENDING.value,
        created_at=t,
        updated_at=t,
        payment_method_id=method.id if method else None,
        gateway_token=method.gateway_token if method else cmd.token,
        card_brand=method.brand if method else None,
        card_last4=method.last4 if method else None,
        card_country=method.country if method else None,
        failure_code=FRAUD_FAILURE_CODE if refused else None,
        failure_message=decision.failure_message()[:255] if refused else None,
        return_url=cmd.return_url,
        device_id=cmd.device_id,
        client_ip=cmd.device_ip,
        risk_decision=decision.action.value,
        risk_reasons=decision.reasons_json(),
    )


def _saved_method(uow: AbstractUnitOfWork, method_id: str | None, user_id: str) -> PaymentMethod | None:
    if method_id is None:
        return None
    method = uow.payment_methods.get(method_id)
    # Another user's method and a deleted one answer exactly like a missing one.
    if method is None or method.user_id != user_id or method.deleted_at is not None:
        raise ValidationFailed("no such payment method", field="payment_method_id")
    return method


# --- payment methods ----------------------------------------------------------------------


def add_payment_method(
    user_id: str,
    gateway_name: str,
    token: str,
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    now: Clock = utcnow,
) -> PaymentMethod:
    if gateway_name not in gateways:
        raise ValidationFailed(f"gateway must be one of {sorted(gateways)}", field="gateway")
    gateway = gateways[gateway_name]
    with uow_factory() as uow:
        customer_ref = uow.customers.get(user_id, gateway_name)
    try:
        if customer_ref is None:
            created = gateway.create_customer(user_id, idempotency_key=f"customer:{gateway_name}:{user_id}")
            with uow_factory() as uow:
                customer_ref = uow.customers.add(user_id, gateway_name, created, now())
                uow.commit()
        method_id = ids.new_id(ids.PAYMENT_METHOD)
        saved = gateway.attach_payment_method(
            customer_ref, token, idempotency_key=idempotency_key_for(method_id, "attach")
        )
    except GatewayUnavailableError as exc:
        raise GatewayUnavailable(f"{gateway_name} did not answer; nothing was saved") from exc
    except GatewayError as exc:
        raise ValidationFailed(f"the gateway refused the token: {exc}", field="token") from exc
    card = saved.card
    method = PaymentMethod(
        id=method_id,
        user_id=user_id,
        gateway=gateway_name,
        gateway_customer_ref=saved.customer_ref,
        gateway_token=saved.token_ref,
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        country=card.country,
        iin=card.iin,
        fingerprint=card.fingerprint,
        created_at=now(),
    )
    with uow_factory() as uow:
        uow.payment_methods.add(method)
        uow.commit()
    return method


def delete_payment_method(
    user_id: str, method_id: str, uow_factory: UowFactory, gateways: Mapping[str, Gateway], now: Clock = utcnow
) -> None:
    with uow_factory() as uow:
        method = uow.payment_methods.get(method_id)
    if method is None or method.user_id != user_id or method.deleted_at is not None:
        raise NotFound(f"payment method {method_id} not found")
    saved = SavedMethod(method.gateway_token, method.gateway_customer_ref, CardDetails(method.brand, method.last4))
    try:
        # Detach first: if the gateway is down the method stays usable and the caller retries.
        gateways[method.gateway].detach_payment_method(saved)
    except GatewayUnavailableError as exc:
        raise GatewayUnavailable(f"{method.gateway} did not answer; the payment method was not deleted") from exc
    with uow_factory() as uow:
        uow.payment_methods.soft_delete(method_id, now())
        uow.commit()


def list_payment_methods(user_id: str, uow_factory: UowFactory) -> list[PaymentMethod]:
    with uow_factory() as uow:
        return uow.payment_methods.list_active(user_id)
