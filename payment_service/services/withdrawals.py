"""Withdrawals: payouts to the user's bank account (NEFT, IMPS) or UPI address, through RazorpayX.

A withdrawal is a keyed request in atomic phases (services/idempotency.py): recorded REQUESTED and
claimed by the request, then `create_payout` outside any transaction (contact -> fund account ->
payout, with a payout idempotency key derived from our id), then its answer applied. Webhooks
(payout.processed, .failed, .reversed, ...) and the worker's sweep apply later answers through the
same function, `apply_payout_result`, which walks the lifecycle forward (domain/lifecycle.py):

    REQUESTED -> PROCESSING -> SETTLED | FAILED,  SETTLED -> REVERSED

An answer that skips steps walks through the steps in between, each with its own event; an answer
behind the stored state (a late payout.processed after the reversal, a duplicate) changes nothing.

The full account number is only in memory: in the command, then in the PayoutRequest handed to the
adapter. It is never stored, logged, put in an event, an error or a response; the record keeps the
name, IFSC and last four digits (or the VPA). A retry by the sweep therefore cannot rebuild a bank
payout from scratch: it finds the payout by our id, or reuses the stored fund account; a bank
withdrawal the gateway never saw is failed after WITHDRAWAL_GIVE_UP_AFTER_SECONDS (the client may
retry with the same Idempotency-Key, and the full body, until then).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..domain import fx, ids, lifecycle
from ..domain.errors import DomainError, GatewayUnavailable, ValidationFailed
from ..domain.events import utcnow
from ..domain.lifecycle import WITHDRAWALS
from ..domain.model import WithdrawalMode, WithdrawalStatus
from ..domain.withdrawals import Withdrawal, mask_long_digit_runs, withdrawal_errors
from ..gateways.base import (
    Beneficiary,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    PayoutRequest,
    PayoutResult,
    PayoutStatus,
    idempotency_key_for,
)
from .lifecycle import DEFAULT_POLICY, Stop, SweepPolicy, SweepReport, sweep, walk
from .unit_of_work import AbstractUnitOfWork, Clock, UowFactory

logger = logging.getLogger(__name__)


NOT_CREATED_REASON = "payout_not_created: the gateway never received this payout; request a new withdrawal"


@dataclass(frozen=True)
class RequestWithdrawal:
    user_id: str
    amount: int
    currency: str
    mode: str
    beneficiary: Beneficiary  # the full account number, in memory only


@dataclass(frozen=True)
class WithdrawalSettings:
    poll_after_seconds: int = 300  # PROCESSING payouts are asked about this long after the last look
    retry_after_seconds: int = 60  # REQUESTED withdrawals nobody answered are retried after this
    give_up_after_seconds: int = 3600  # a bank payout the gateway never saw is failed after this
    canonical: fx.Canonicalizer = fx.no_canonical  # the amount in CANONICAL_CURRENCY (never waits)


@dataclass(frozen=True)
class Refused:
    """A definite refusal of the payout (bad beneficiary, unsupported mode): the withdrawal fails."""

    reason: str


def validate(cmd: RequestWithdrawal) -> None:
    b = cmd.beneficiary
    errors = withdrawal_errors(cmd.amount, cmd.currency, cmd.mode, b.name, b.account_number, b.ifsc, b.vpa)
    if errors:
        raise ValidationFailed("the withdrawal request is invalid", errors=errors)


# --- applying an answer: shared by every path ---------------------------------------------------


def apply_payout_result(
    uow: AbstractUnitOfWork, w: Withdrawal, result: PayoutResult | Refused, at: datetime, settings: WithdrawalSettings
) -> Withdrawal:
    """Land what the gateway says about the payout, inside the caller's unit of work."""
    if isinstance(result, Refused):
        return walk(uow, WITHDRAWALS, w, WithdrawalStatus.FAILED.value, at, failure_reason=result.reason[:255])[0]
    target = WITHDRAWALS.target_for(result.status.value)
    assert target is not None
    changes: dict[str, Any] = {"next_attempt_at": at + timedelta(seconds=settings.poll_after_seconds)}
    if w.gateway_payout_id is None and result.gateway_payout_id:
        changes["gateway_payout_id"] = result.gateway_payout_id
    if w.fund_account_ref is None and result.fund_account_ref:
        changes["fund_account_ref"] = result.fund_account_ref
    if result.utr and not w.utr:
        changes["utr"] = result.utr
    if target in (WithdrawalStatus.FAILED.value, WithdrawalStatus.REVERSED.value):
        default = "payout reversed by the beneficiary bank" if target == WithdrawalStatus.REVERSED.value else (
            "payout failed")
        changes["failure_reason"] = mask_long_digit_runs(result.failure_reason or default)[:255]
    after, moved = walk(uow, WITHDRAWALS, w, target, at, **changes)
    if not moved:
        # Nothing to move (a duplicate, or still processing): keep what is new, and look again later.
        # Never a UTR: an answer behind the stored state (processed after failed) proves nothing.
        refs = {k: v for k, v in changes.items() if k in ("gateway_payout_id", "fund_account_ref")}
        if refs:
            uow.records.update(lifecycle.WITHDRAWAL, w.id, **refs)
        if after.status in WITHDRAWALS.open:
            uow.records.release(
                lifecycle.WITHDRAWAL, w.id, next_attempt_at=changes["next_attempt_at"], count_attempt=False
            )
        after = Withdrawal(**{**vars(after), **refs, "claimed_until": None})
    else:
        logger.info("withdrawal moved", extra={"withdrawal_id": w.id, "status": after.status})
    return after


def send_payout(gateway: Gateway, w: Withdrawal, beneficiary: Beneficiary) -> PayoutResult | Refused:
    """Ask the gateway for the payout, with the same payout key on every call."""
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
        return gateway.create_payout(request)
    except GatewayUnavailableError:
        raise
    except GatewayError as exc:
        if exc.http_status == 409 or exc.code == "idempotency_error":
            # The same payout key is in flight elsewhere: the outcome is unknown.
            raise GatewayUnavailableError(f"withdrawal {w.id} is being sent already", http_status=409) from exc
        # The adapter's messages hold no account number; masking long digit runs keeps it that way.
        logger.warning("payout refused", extra={"withdrawal_id": w.id, "code": exc.code})
        return Refused(mask_long_digit_runs(f"{exc.code}: {exc}"))


# --- the request ----------------------------------------------------------------------------------


class WithdrawalFlow:
    """A withdrawal as a keyed request (services/idempotency.Flow)."""

    kind = lifecycle.WITHDRAWAL
    prefix = ids.WITHDRAWAL

    def __init__(self, cmd: RequestWithdrawal, payout_gateway: Gateway, settings: WithdrawalSettings) -> None:
        validate(cmd)
        self.cmd = cmd
        self.gateway = payout_gateway
        self.settings = settings

    def create(self, uow: AbstractUnitOfWork, record_id: str, t: datetime, claimed_until: datetime) -> Withdrawal:
        cmd, b = self.cmd, self.cmd.beneficiary
        w = Withdrawal(
            id=record_id,
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
            claimed_until=claimed_until,
            next_attempt_at=self.retry_at(t),
            **fx.canonical_fields(self.settings.canonical(cmd.amount, cmd.currency, t)),
        )
        uow.withdrawals.add(w)
        logger.info(
            "withdrawal recorded",
            extra={"withdrawal_id": w.id, "user_id": w.user_id, "amount": w.amount, "mode": w.mode},
        )
        return w

    def resume(self, uow: AbstractUnitOfWork, record: Withdrawal) -> None:
        return None

    def needs_call(self, record: Withdrawal) -> bool:
        return record.status == WithdrawalStatus.REQUESTED.value

    def call(self, record: Withdrawal) -> PayoutResult | Refused:
        return send_payout(self.gateway, record, self.cmd.beneficiary)

    def apply(
        self, uow: AbstractUnitOfWork, record: Withdrawal, answer: PayoutResult | Refused, t: datetime
    ) -> Withdrawal:
        return apply_payout_result(uow, record, answer, t, self.settings)

    def unavailable(self, record: Withdrawal) -> DomainError:
        return GatewayUnavailable(
            f"{self.gateway.name} did not answer; withdrawal {record.id} is REQUESTED and will be resolved"
        )

    def retry_at(self, t: datetime) -> datetime:
        return t + timedelta(seconds=self.settings.retry_after_seconds)


# --- payout webhooks ------------------------------------------------------------------------------


def apply_payout_event(
    uow: AbstractUnitOfWork, w: Withdrawal, result: PayoutResult, at: datetime, settings: WithdrawalSettings
) -> bool:
    """payout.processed -> SETTLED, payout.failed/rejected/cancelled -> FAILED, payout.reversed -> REVERSED,
    inside the caller's unit of work (the webhook applier's); payout.queued/pending/initiated/processing
    are progress reports: ignored. True if the withdrawal moved."""
    if result.status is PayoutStatus.PROCESSING:
        return False
    after = apply_payout_result(uow, w, result, at, settings)
    return after.status != w.status


# --- the sweeps -----------------------------------------------------------------------------------


def resolve_withdrawals(
    uow_factory: UowFactory,
    gateway: Gateway,
    settings: WithdrawalSettings,
    now: Clock = utcnow,
    policy: SweepPolicy = DEFAULT_POLICY,
    stop: Stop | None = None,
) -> SweepReport:
    """Withdrawals the gateway still owes an answer about.

    PROCESSING: ask about the payout (a lost webhook). REQUESTED (the payout call failed or its
    answer was lost): ask by our id first (the payout may exist); otherwise send it again with the
    same payout key when that needs no account number (UPI: the VPA is stored; a bank payout whose
    fund account is known). A bank payout the gateway never saw cannot be rebuilt without the account
    number, which we do not keep: it is failed once it is older than `give_up_after_seconds`."""
    def handle(w: Withdrawal) -> Withdrawal:
        t = now()
        answer: PayoutResult | Refused | None
        if w.status == WithdrawalStatus.PROCESSING.value:
            answer = gateway.retrieve_payout(w.gateway_payout_id) if w.gateway_payout_id else gateway.find_payout(w.id)
        else:
            answer = gateway.find_payout(w.id)
            if answer is None and (w.mode == WithdrawalMode.UPI.value or w.fund_account_ref):
                answer = send_payout(gateway, w, Beneficiary(name=w.beneficiary_name, ifsc=w.ifsc, vpa=w.vpa))
            elif answer is None and w.created_at < t - timedelta(seconds=settings.give_up_after_seconds):
                answer = Refused(NOT_CREATED_REASON)
        with uow_factory() as uow:
            if answer is None:  # the client may still retry with the full details
                uow.records.release(
                    lifecycle.WITHDRAWAL, w.id, next_attempt_at=t + timedelta(seconds=settings.retry_after_seconds),
                    count_attempt=False,
                )
                after = w
            else:
                after = apply_payout_result(uow, w, answer, now(), settings)
            uow.commit()
        return after

    open_statuses = {WithdrawalStatus.REQUESTED.value, WithdrawalStatus.PROCESSING.value}
    return sweep("withdrawals", uow_factory, lifecycle.WITHDRAWAL, open_statuses, handle, now, policy, stop)
