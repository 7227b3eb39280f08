"""Top-ups, saved payment methods and reads.

Rule 2 of DESIGN.md shapes `top_up`: the PENDING payment is committed before the gateway is
called, the call happens outside any transaction, and its result is applied through the same
guarded transitions that webhooks, reconciliation and expiry use (`apply_charge_result`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..domain import ids
from ..domain.errors import GatewayUnavailable, NotFound, ValidationFailed
from ..domain.events import Event, EventType, rfc3339, utcnow
from ..domain.model import PAYMENT_TRANSITIONS, PaymentStatus
from ..domain.payments import Payment, PaymentMethod
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
from .risk import RiskAction, RiskDecision, RiskFacts, RiskRules, assess
from .unit_of_work import AbstractUnitOfWork, Clock, UowFactory

logger = logging.getLogger(__name__)


FRAUD_FAILURE_CODE = "fraud_suspected"


@dataclass(frozen=True)
class TopUp:
    user_id: str
    amount: int
    currency: str
    payment_id: str  # allocated by the idempotency claim, so a retry resumes the same payment
    gateway: str | None = None
    token: str | None = None
    payment_method_id: str | None = None
    return_url: str | None = None
    device_id: str | None = None
    device_ip: str | None = None
    resumed: bool = True  # False only when the payment id is known to be brand new (saves a read)


@dataclass(frozen=True)
class PaymentSettings:
    rules: RiskRules
    pending_3ds_ttl_seconds: int = 900


# --- events -------------------------------------------------------------------------------


def _base_data(p: Payment) -> dict[str, object]:
    return {
        "payment_id": p.id,
        "user_id": p.user_id,
        "amount": p.amount,
        "currency": p.currency,
        "gateway": p.gateway,
        "gateway_payment_id": p.gateway_payment_id,
    }


def captured_event(p: Payment) -> Event:
    assert p.captured_at is not None
    return Event(EventType.PAYMENT_CAPTURED, p.id, p.user_id, {**_base_data(p), "captured_at": rfc3339(p.captured_at)})


def failed_event(p: Payment) -> Event:
    data = {**_base_data(p), "failure_code": p.failure_code, "failure_message": p.failure_message}
    return Event(EventType.PAYMENT_FAILED, p.id, p.user_id, data)


def expired_event(p: Payment) -> Event:
    return Event(EventType.PAYMENT_EXPIRED, p.id, p.user_id, _base_data(p))


# --- transitions shared by every path -----------------------------------------------------


def move_payment(uow: AbstractUnitOfWork, payment: Payment, new: PaymentStatus, **changes: object) -> Payment | None:
    """Guarded transition plus its event, inside the caller's unit of work. None if another path won."""
    allowed = [s.value for s in PAYMENT_TRANSITIONS[new]]
    moved = uow.payments.transition(payment.id, new.value, allowed, **changes)
    if not moved:
        return None
    after = Payment(**{**vars(payment), **changes, "status": new.value})
    if new is PaymentStatus.CAPTURED:
        uow.outbox.add(captured_event(after))
    elif new is PaymentStatus.FAILED:
        uow.outbox.add(failed_event(after))
    elif new is PaymentStatus.EXPIRED:
        uow.outbox.add(expired_event(after))
    return after


def apply_charge_result(
    uow_factory: UowFactory,
    payment_id: str,
    result: ChargeResult,
    ttl_3ds: int,
    now: Clock = utcnow,
    known: Payment | None = None,
) -> Payment:
    """Apply what the gateway said to the payment; a no-op if another path already moved it.

    `known` is the payment as the caller holds it (the top-up that just recorded it): it saves
    reading the row again. Only its unchanging fields are used; the status guard is in SQL.
    """
    t = now()
    card = result.card
    card_changes: dict[str, object] = {}
    if card is not None:
        card_changes = {"card_brand": card.brand, "card_last4": card.last4, "card_country": card.country}
    after: Payment | None = None
    with uow_factory() as uow:
        payment = known if known is not None else uow.payments.get(payment_id)
        if payment is None:
            raise NotFound(f"payment {payment_id} not found")
        gw_id = {"gateway_payment_id": result.gateway_payment_id} if result.gateway_payment_id else {}
        if result.status is ChargeStatus.SUCCEEDED:
            after = move_payment(
                uow,
                payment,
                PaymentStatus.CAPTURED,
                **gw_id,
                **card_changes,
                captured_at=t,
                next_action_url=None,
                updated_at=t,
            )
        elif result.status is ChargeStatus.REQUIRES_ACTION:
            after = move_payment(
                uow,
                payment,
                PaymentStatus.PENDING_3DS,
                **gw_id,
                **card_changes,
                next_action_url=result.redirect_url,
                expires_at=t + timedelta(seconds=ttl_3ds),
                updated_at=t,
            )
        elif result.status in (ChargeStatus.FAILED, ChargeStatus.CANCELED):
            after = move_payment(
                uow,
                payment,
                PaymentStatus.FAILED,
                **gw_id,
                **card_changes,
                failure_code=result.failure_code or "payment_failed",
                failure_message=(result.failure_message or "the payment failed")[:255],
                next_action_url=None,
                updated_at=t,
            )
        elif gw_id and payment.gateway_payment_id is None:
            uow.payments.update(payment_id, **gw_id, updated_at=t)  # PROCESSING: stays PENDING
        uow.commit()
    if after is not None:
        return after
    # Nothing moved here (another path won, or still processing): answer with what is stored.
    with uow_factory() as uow:
        fresh = uow.payments.get(payment_id)
    assert fresh is not None
    return fresh


# --- top-up -------------------------------------------------------------------------------


def top_up(
    cmd: TopUp,
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    now: Clock = utcnow,
) -> Payment:
    existing = None
    if cmd.resumed:
        with uow_factory() as uow:
            existing = uow.payments.get(cmd.payment_id)
    if existing is not None:
        # A retry of a request that crashed or timed out after its payment was recorded.
        if existing.status != PaymentStatus.PENDING:
            return existing
        method = _saved_method(uow_factory, existing.payment_method_id, cmd.user_id)
        return _charge(
            existing,
            method,
            uow_factory,
            gateways,
            settings,
            force_3ds=existing.risk_decision == RiskAction.REQUIRE_3DS.value,
            now=now,
        )

    method = _saved_method(uow_factory, cmd.payment_method_id, cmd.user_id)
    gateway_name = method.gateway if method is not None else cmd.gateway
    if gateway_name is None or gateway_name not in gateways:
        raise ValidationFailed(f"gateway must be one of {sorted(gateways)}", field="gateway")

    t = now()
    with uow_factory() as uow:
        window = t - timedelta(seconds=settings.rules.velocity_window_seconds)
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
            settings.rules,
        )
        payment = _new_payment(cmd, gateway_name, method, decision, t)
        uow.payments.add(payment)
        if decision.refused:
            uow.outbox.add(failed_event(payment))
        # Committed before the gateway is called: whatever happens next, this row exists and
        # reconciliation can find the charge by our id.
        uow.commit()
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
    if decision.refused:
        return payment
    return _charge(
        payment,
        method,
        uow_factory,
        gateways,
        settings,
        force_3ds=decision.action is RiskAction.REQUIRE_3DS,
        now=now,
        token=cmd.token,
    )


def _new_payment(
    cmd: TopUp, gateway: str, method: PaymentMethod | None, decision: RiskDecision, t: datetime
) -> Payment:
    refused = decision.refused
    return Payment(
        id=cmd.payment_id,
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


def _saved_method(uow_factory: UowFactory, method_id: str | None, user_id: str) -> PaymentMethod | None:
    if method_id is None:
        return None
    with uow_factory() as uow:
        method = uow.payment_methods.get(method_id)
    # Another user's method and a deleted one answer exactly like a missing one.
    if method is None or method.user_id != user_id or method.deleted_at is not None:
        raise ValidationFailed("no such payment method", field="payment_method_id")
    return method


def _charge(
    payment: Payment,
    method: PaymentMethod | None,
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: PaymentSettings,
    *,
    force_3ds: bool,
    now: Clock,
    token: str | None = None,
) -> Payment:
    gateway = gateways[payment.gateway]
    request = ChargeRequest(
        reference=payment.id,
        amount=payment.amount,
        currency=payment.currency,
        # Derived from our own id: the same key on every retry, so the gateway charges at most once.
        idempotency_key=idempotency_key_for(payment.id, "charge"),
        token=method.gateway_token if method else (token or payment.gateway_token or ""),
        customer_ref=method.gateway_customer_ref if method else None,
        return_url=payment.return_url,
        description=f"Wallet top-up {payment.id}",
        metadata={"payment_id": payment.id, "user_id": payment.user_id},
        request_three_d_secure=force_3ds,
    )
    try:
        result = gateway.charge(request)
    except GatewayUnavailableError as exc:
        # The outcome is unknown: the payment stays PENDING; a retry with the same Idempotency-Key
        # resumes it with the same gateway key, and reconciliation resolves it otherwise.
        logger.warning("gateway unavailable during charge", extra={"payment_id": payment.id, "error": str(exc)})
        raise GatewayUnavailable(
            f"{payment.gateway} did not answer; payment {payment.id} is pending and will be resolved"
        ) from exc
    except GatewayError as exc:
        result = ChargeResult(ChargeStatus.FAILED, None, failure_code=exc.code, failure_message=str(exc))
    return apply_charge_result(uow_factory, payment.id, result, settings.pending_3ds_ttl_seconds, now, known=payment)


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
