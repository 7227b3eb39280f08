"""Withdrawals: payouts to the user's bank account (NEFT, IMPS) or UPI address, through RazorpayX.

Flow (DESIGN.md rule 2): the withdrawal is recorded REQUESTED and committed, then the adapter's
`create_payout` is called outside any transaction (contact -> fund account -> payout, with a payout
idempotency key derived from our id), then its answer is applied. Webhooks (payout.processed,
.failed, .reversed, ...) and the worker's jobs apply later answers through the same function,
`apply_payout_result`, which locks the withdrawal row and walks the state machine forward:

    REQUESTED -> PROCESSING -> SETTLED | FAILED,  SETTLED -> REVERSED

An answer that skips steps (payout.processed before the creation response was applied, a
payout.reversed before payout.processed) walks through the steps in between in one transaction,
each with its own event: a reversed payout was settled first, so WITHDRAWAL_SETTLED then
WITHDRAWAL_REVERSED. An answer behind the stored state (a late payout.processed after the
reversal, a duplicate) changes nothing.

The full account number is only in memory: in the command, then in the PayoutRequest handed to the
adapter. It is never stored, logged, put in an event, an error or a response; the record keeps the
name, IFSC and last four digits (or the VPA). A retry by the worker therefore cannot rebuild a bank
payout from scratch: it finds the payout by our id, or reuses the stored fund account; a bank
withdrawal the gateway never saw is failed after WITHDRAWAL_GIVE_UP_AFTER_SECONDS (the client may
retry with the same Idempotency-Key, and the full body, until then).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..domain.errors import GatewayUnavailable, NotFound, ValidationFailed
from ..domain.events import Event, EventType, rfc3339, utcnow
from ..domain.model import WITHDRAWAL_TRANSITIONS, WithdrawalMode, WithdrawalStatus
from ..domain.withdrawals import Withdrawal, mask_long_digit_runs, withdrawal_errors
from ..gateways.base import (
    Beneficiary,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    PayoutRequest,
    PayoutResult,
    PayoutStatus,
    WebhookEvent,
    idempotency_key_for,
)
from . import webhooks
from .unit_of_work import AbstractUnitOfWork, Clock, UowFactory

logger = logging.getLogger(__name__)


PAYOUT_GATEWAY = "razorpay"  # RazorpayX does payouts; the Stripe adapter refuses them
NOT_CREATED_REASON = "payout_not_created: the gateway never received this payout; request a new withdrawal"

_TARGET = {
    PayoutStatus.PROCESSING: WithdrawalStatus.PROCESSING,
    PayoutStatus.SETTLED: WithdrawalStatus.SETTLED,
    PayoutStatus.FAILED: WithdrawalStatus.FAILED,
    PayoutStatus.REVERSED: WithdrawalStatus.REVERSED,
}
# The way forward from each status to each later one: the steps to walk, in order.
_FORWARD: dict[tuple[WithdrawalStatus, WithdrawalStatus], list[WithdrawalStatus]] = {
    (WithdrawalStatus.REQUESTED, WithdrawalStatus.PROCESSING): [WithdrawalStatus.PROCESSING],
    (WithdrawalStatus.REQUESTED, WithdrawalStatus.SETTLED): [WithdrawalStatus.PROCESSING, WithdrawalStatus.SETTLED],
    (WithdrawalStatus.REQUESTED, WithdrawalStatus.FAILED): [WithdrawalStatus.FAILED],
    (WithdrawalStatus.REQUESTED, WithdrawalStatus.REVERSED): [
        WithdrawalStatus.PROCESSING, WithdrawalStatus.SETTLED, WithdrawalStatus.REVERSED,
    ],
    (WithdrawalStatus.PROCESSING, WithdrawalStatus.SETTLED): [WithdrawalStatus.SETTLED],
    (WithdrawalStatus.PROCESSING, WithdrawalStatus.FAILED): [WithdrawalStatus.FAILED],
    (WithdrawalStatus.PROCESSING, WithdrawalStatus.REVERSED): [WithdrawalStatus.SETTLED, WithdrawalStatus.REVERSED],
    (WithdrawalStatus.SETTLED, WithdrawalStatus.REVERSED): [WithdrawalStatus.REVERSED],
}


@dataclass(frozen=True)
class RequestWithdrawal:
    withdrawal_id: str  # allocated by the idempotency claim, so a retry resumes the same withdrawal
    user_id: str
    amount: int
    currency: str
    mode: str
    beneficiary: Beneficiary  # the full account number, in memory only
    resumed: bool = True


@dataclass(frozen=True)
class WithdrawalSettings:
    poll_after_seconds: int = 300  # PROCESSING payouts untouched this long are asked about
    retry_after_seconds: int = 60  # REQUESTED withdrawals untouched this long are retried
    give_up_after_seconds: int = 3600  # a bank payout the gateway never saw is failed after this


# --- events -------------------------------------------------------------------------------


def withdrawal_event(w: Withdrawal, at: datetime) -> Event:
    kind = {
        WithdrawalStatus.SETTLED.value: EventType.WITHDRAWAL_SETTLED,
        WithdrawalStatus.FAILED.value: EventType.WITHDRAWAL_FAILED,
        WithdrawalStatus.REVERSED.value: EventType.WITHDRAWAL_REVERSED,
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
    }
    if w.status != WithdrawalStatus.SETTLED.value:
        data["failure_reason"] = w.failure_reason
    return Event(kind, w.id, w.user_id, data)


def move_withdrawal(
    uow: AbstractUnitOfWork, w: Withdrawal, new: WithdrawalStatus, at: datetime, **changes: Any
) -> Withdrawal | None:
    """Guarded transition plus its event, inside the caller's unit of work. None if another path won."""
    allowed = [s.value for s in WITHDRAWAL_TRANSITIONS[new]]
    if not uow.withdrawals.transition(w.id, new.value, allowed, **changes, updated_at=at):
        return None
    after = Withdrawal(**{**vars(w), **changes, "status": new.value, "updated_at": at})
    if new is not WithdrawalStatus.PROCESSING:
        uow.outbox.add(withdrawal_event(after, at))
    return after


# --- the request ----------------------------------------------------------------------------


def request_withdrawal(
    cmd: RequestWithdrawal, uow_factory: UowFactory, gateways: Mapping[str, Gateway], now: Clock = utcnow
) -> Withdrawal:
    b = cmd.beneficiary
    errors = withdrawal_errors(cmd.amount, cmd.currency, cmd.mode, b.name, b.account_number, b.ifsc, b.vpa)
    if errors:
        raise ValidationFailed("the withdrawal request is invalid", errors=errors)
    if cmd.resumed:
        with uow_factory() as uow:
            existing = uow.withdrawals.get(cmd.withdrawal_id)
        if existing is not None:
            # A retry of a request that stopped half-way (gateway down, crash): same id, same payout key.
            if existing.status != WithdrawalStatus.REQUESTED.value:
                return existing
            if not _touch(uow_factory, existing, now()):
                return _fresh(uow_factory, existing.id)
            return _submit(existing, b, uow_factory, gateways, now)
    t = now()
    w = Withdrawal(
        id=cmd.withdrawal_id,
        user_id=cmd.user_id,
        amount=cmd.amount,
        currency=cmd.currency,
        mode=cmd.mode,
        status=WithdrawalStatus.REQUESTED.value,
        beneficiary_name=b.name,
        account_last4=b.account_number[-4:] if b.account_number else None,
        ifsc=b.ifsc,
        vpa=b.vpa,
        created_at=t,
        updated_at=t,
    )
    with uow_factory() as uow:
        uow.withdrawals.add(w)
        # Committed before the gateway is called: whatever happens next, the worker can find the
        # payout by this id.
        uow.commit()
    logger.info(
        "withdrawal recorded",
        extra={"withdrawal_id": w.id, "user_id": w.user_id, "amount": w.amount, "mode": w.mode},
    )
    return _submit(w, b, uow_factory, gateways, now)


def _touch(uow_factory: UowFactory, w: Withdrawal, t: datetime, updated_before: datetime | None = None) -> bool:
    """Mark a REQUESTED withdrawal as being sent now (a guarded UPDATE of updated_at), so the worker's
    give-up, which only takes withdrawals untouched for a while, cannot fail one whose payout is on its
    way; with `updated_before`, the worker's own claim. False if it is no longer REQUESTED (or was touched)."""
    requested = WithdrawalStatus.REQUESTED.value
    with uow_factory() as uow:
        moved = uow.withdrawals.transition(w.id, requested, [requested], updated_before=updated_before, updated_at=t)
        uow.commit()
    return moved


def _submit(
    w: Withdrawal, beneficiary: Beneficiary, uow_factory: UowFactory, gateways: Mapping[str, Gateway], now: Clock
) -> Withdrawal:
    request = PayoutRequest(
        reference=w.id,
        amount=w.amount,
        currency=w.currency,
        mode=w.mode,
        beneficiary=beneficiary,
        idempotency_key=idempotency_key_for(w.id, "payout"),
        contact_ref=w.contact_ref,
        fund_account_ref=w.fund_account_ref,
    )
    try:
        result = gateways[PAYOUT_GATEWAY].create_payout(request)
    except GatewayUnavailableError as exc:
        logger.warning("gateway unavailable during payout", extra={"withdrawal_id": w.id, "error": str(exc)})
        raise GatewayUnavailable(
            f"{PAYOUT_GATEWAY} did not answer; withdrawal {w.id} is REQUESTED and will be resolved"
        ) from exc
    except GatewayError as exc:
        if exc.http_status == 409 or exc.code == "idempotency_error":
            # The same payout key is in flight elsewhere (a retry racing the worker): outcome unknown.
            raise GatewayUnavailable(f"withdrawal {w.id} is being sent already; retry later") from exc
        # A definite refusal (bad beneficiary, unsupported mode): the withdrawal fails. The adapter's
        # messages hold no account number; masking long digit runs keeps it that way.
        logger.warning("payout refused", extra={"withdrawal_id": w.id, "code": exc.code})
        return fail_withdrawal(uow_factory, w.id, mask_long_digit_runs(f"{exc.code}: {exc}")[:255], now)
    return apply_payout_result(uow_factory, w.id, result, now)


def fail_withdrawal(
    uow_factory: UowFactory, withdrawal_id: str, reason: str, now: Clock, updated_before: datetime | None = None
) -> Withdrawal:
    t = now()
    with uow_factory() as uow:
        w = uow.withdrawals.get(withdrawal_id, for_update=True)
        if w is None:
            raise NotFound(f"withdrawal {withdrawal_id} not found")
        if updated_before is not None and w.updated_at >= updated_before:
            return w  # touched meanwhile: someone is sending it
        after = move_withdrawal(uow, w, WithdrawalStatus.FAILED, t, failure_reason=reason[:255])
        uow.commit()
    return after or _fresh(uow_factory, withdrawal_id)


# --- applying an answer: shared by every path ---------------------------------------------


def apply_payout_result(
    uow_factory: UowFactory, withdrawal_id: str, result: PayoutResult, now: Clock = utcnow
) -> Withdrawal:
    """Apply what the gateway says about the payout; returns the withdrawal as it is afterwards."""
    t = now()
    target = _TARGET[result.status]
    with uow_factory() as uow:
        # The row lock makes the walk below see the status it moves from; each step is guarded anyway.
        w = uow.withdrawals.get(withdrawal_id, for_update=True)
        if w is None:
            raise NotFound(f"withdrawal {withdrawal_id} not found")
        refs: dict[str, Any] = {}
        if w.gateway_payout_id is None and result.gateway_payout_id:
            refs["gateway_payout_id"] = result.gateway_payout_id
        if w.fund_account_ref is None and result.fund_account_ref:
            refs["fund_account_ref"] = result.fund_account_ref
        steps = _FORWARD.get((WithdrawalStatus(w.status), target), [])
        if not steps:
            if refs:
                uow.withdrawals.update(w.id, **refs)
                uow.commit()
                w = Withdrawal(**{**vars(w), **refs})
            return w
        for step in steps:
            changes: dict[str, Any] = {}
            if step is WithdrawalStatus.PROCESSING:
                changes = refs
            elif step is WithdrawalStatus.SETTLED:
                changes = {**refs, "utr": result.utr or w.utr}
            else:  # FAILED, REVERSED
                default = "payout reversed by the beneficiary bank" if step is WithdrawalStatus.REVERSED else (
                    "payout failed")
                reason = mask_long_digit_runs(result.failure_reason or default)[:255]
                changes = {**refs, "failure_reason": reason}
                if result.utr and not w.utr:
                    changes["utr"] = result.utr
            moved = move_withdrawal(uow, w, step, t, **changes)
            if moved is None:  # cannot happen under the row lock; stop rather than guess
                break
            w, refs = moved, {}
        uow.commit()
    logger.info("withdrawal moved", extra={"withdrawal_id": w.id, "status": w.status})
    return w


def _fresh(uow_factory: UowFactory, withdrawal_id: str) -> Withdrawal:
    with uow_factory() as uow:
        w = uow.withdrawals.get(withdrawal_id)
    if w is None:
        raise NotFound(f"withdrawal {withdrawal_id} not found")
    return w


# --- payout webhooks (registered with the inbox applier) ------------------------------------


def apply_payout_event(event: WebhookEvent, gateway: Gateway, uow_factory: UowFactory, now: Clock) -> str | None:
    """payout.processed -> SETTLED, payout.failed/rejected/cancelled -> FAILED, payout.reversed -> REVERSED;
    payout.queued/pending/initiated/processing are progress reports: ignored. None: not a payout event."""
    result = gateway.payout_result_from_event(event)
    if result is None:
        return None
    with uow_factory() as uow:
        w = uow.withdrawals.get(event.reference) if event.reference else None
        if w is None and result.gateway_payout_id:
            w = uow.withdrawals.find_by_gateway_id(result.gateway_payout_id)
    if w is None:
        raise webhooks.UnknownObject(
            f"no withdrawal for reference={event.reference} gateway_id={result.gateway_payout_id}"
        )
    if result.status is PayoutStatus.PROCESSING:
        return "IGNORED"
    after = apply_payout_result(uow_factory, w.id, result, now)
    return "APPLIED" if after.status != w.status else "IGNORED"


if apply_payout_event not in webhooks.EXTRA_HANDLERS:
    webhooks.EXTRA_HANDLERS.append(apply_payout_event)


# --- the worker's jobs ----------------------------------------------------------------------


def poll_processing_payouts(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: WithdrawalSettings,
    now: Clock = utcnow,
    limit: int = 100,
) -> int:
    """Ask the gateway about payouts PROCESSING for a while (a lost webhook); returns how many moved."""
    with uow_factory() as uow:
        stuck = uow.withdrawals.stuck(
            WithdrawalStatus.PROCESSING.value, now() - timedelta(seconds=settings.poll_after_seconds), limit
        )
    moved = 0
    for w in stuck:
        if w.gateway_payout_id is None:
            continue
        try:
            result = gateways[PAYOUT_GATEWAY].retrieve_payout(w.gateway_payout_id)
        except GatewayError as exc:
            logger.warning("payout poll failed", extra={"withdrawal_id": w.id, "error": str(exc)})
            continue
        if result.status is PayoutStatus.PROCESSING:
            with uow_factory() as uow:
                uow.withdrawals.update(w.id, updated_at=now())  # look again later, not every round
                uow.commit()
            continue
        after = apply_payout_result(uow_factory, w.id, result, now)
        moved += after.status != w.status
    return moved


def retry_requested_withdrawals(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: WithdrawalSettings,
    now: Clock = utcnow,
    limit: int = 100,
) -> int:
    """Resolve withdrawals left REQUESTED because the payout call failed or its answer was lost.

    First ask the gateway by our id (a lost response: the payout exists). Otherwise send it again with
    the same payout key when that needs no account number (UPI: the VPA is stored; a bank payout whose
    fund account is known). A bank payout the gateway never saw cannot be rebuilt without the account
    number, which we do not keep: it is failed once it is older than `give_up_after_seconds`."""
    cutoff = now() - timedelta(seconds=settings.retry_after_seconds)
    with uow_factory() as uow:
        stuck = uow.withdrawals.stuck(WithdrawalStatus.REQUESTED.value, cutoff, limit)
    resolved = 0
    gateway = gateways[PAYOUT_GATEWAY]
    for w in stuck:
        try:
            found = gateway.find_payout(w.id)
        except GatewayError as exc:
            logger.warning("payout lookup failed", extra={"withdrawal_id": w.id, "error": str(exc)})
            continue
        if found is not None:
            after = apply_payout_result(uow_factory, w.id, found, now)
        elif w.mode == WithdrawalMode.UPI.value or w.fund_account_ref:
            if not _touch(uow_factory, w, now(), updated_before=cutoff):
                continue  # a client retry is sending it right now
            beneficiary = Beneficiary(name=w.beneficiary_name, ifsc=w.ifsc, vpa=w.vpa)
            try:
                after = _submit(w, beneficiary, uow_factory, gateways, now)
            except GatewayUnavailable:
                continue
        elif w.created_at < now() - timedelta(seconds=settings.give_up_after_seconds):
            after = fail_withdrawal(uow_factory, w.id, NOT_CREATED_REASON, now, updated_before=cutoff)
        else:
            continue  # the client may still retry with the full details
        resolved += after.status != WithdrawalStatus.REQUESTED.value
    return resolved
