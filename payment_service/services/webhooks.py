"""Webhooks in: store verified events at once (the inbox), apply them later, in any order.

Applying goes through the same guarded transitions as the synchronous path, so a duplicate,
a late or a reordered event changes nothing it should not: a terminal payment never moves back.

Ours or not is decided once, by the first applier that takes the event, and every stored event ends
settled with one of these statuses:

* IGNORED: a type no handler acts on (`payment_intent.created`, `order.paid`, `customer.updated`), a
  state that is no outcome (processing), or an outcome that moves nothing (a duplicate, an answer
  behind the stored state);
* NOT_OURS: an object that carries no id of ours (metadata `payment_id`, `refund_id`, a receipt, a
  payout reference) and whose gateway id we do not hold: the Dashboard, payment links, another
  application on the same gateway account. Never retried;
* APPLIED: a record of ours moved;
* RETRY, then APPLIED or FAILED: an object that carries an id of ours we do not hold (yet). Retried
  with backoff for `ApplyPolicy.retry_for_seconds`, then FAILED, logged at error level and counted,
  for a person to look at.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..domain import audit
from ..domain.events import utcnow
from ..domain.payments import InboxEvent
from ..gateways.base import ChargeResult, ChargeStatus, Gateway, PayoutResult, RefundResult, WebhookEvent
from .lifecycle import Stop, UnknownObject
from .payments import PaymentSettings, apply_charge_result
from .refunds import RefundSettings, apply_refund_event
from .unit_of_work import AbstractUnitOfWork, UowFactory
from .withdrawals import WithdrawalSettings, apply_payout_event

logger = logging.getLogger(__name__)

APPLIED, IGNORED, NOT_OURS, FAILED = "APPLIED", "IGNORED", "NOT_OURS", "FAILED"
MAX_ATTEMPTS = 25  # an event whose applying keeps raising (not an unknown object): then kept as FAILED

__all__ = [
    "UnknownObject", "ApplySettings", "ApplyPolicy", "store_webhook", "apply_due_events", "apply_until_stopped",
    "apply_event",
    "APPLIED", "IGNORED", "NOT_OURS", "FAILED",
]


@dataclass(frozen=True)
class ApplySettings:
    """What applying an answer needs to know, per kind of record."""

    payments: PaymentSettings
    refunds: RefundSettings = RefundSettings()
    withdrawals: WithdrawalSettings = WithdrawalSettings()


@dataclass(frozen=True)
class ApplyPolicy:
    # Events never tried, per claim, oldest first.
    batch: int = 100
    # Besides them, per claim: due retries, and as many events whose applier died. Fresh events never
    # wait behind a pile of retries, and retries still move while fresh events keep coming.
    retry_share: int = 10
    # How long an applier owns what it claimed; one that dies leaves it to another after this.
    lease_seconds: float = 60.0
    # An id of ours we do not hold is looked for again this long after the event came in, then the
    # event is FAILED (surfaced). Our records are committed before the gateway is called (rule 2),
    # so a genuine one turns up within seconds; one that never does is someone else's or a bug.
    retry_for_seconds: float = 900.0
    backoff_max_seconds: float = 60.0

    def backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(2 ** max(attempts, 1), self.backoff_max_seconds))


DEFAULT_APPLY_POLICY = ApplyPolicy()


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


def apply_due_events(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: ApplySettings,
    now: Callable[[], datetime] = utcnow,
    policy: ApplyPolicy = DEFAULT_APPLY_POLICY,
    stop: Stop | None = None,
) -> int:
    """Claim one batch of due events, settle at once those we do not act on or that are not ours,
    and apply each of the others in its own transaction; returns how many were claimed (0: nothing
    is due). Safe with N appliers: they never share an event.

    `stop` set: the events not started yet are given back at once, for another applier to take.
    """
    t = now()
    with uow_factory() as uow:
        batch = uow.gateway_events.claim_due(t, t + timedelta(seconds=policy.lease_seconds), policy.batch,
                                             policy.retry_share)
        uow.commit()
    if not batch:
        return 0
    rest = _settle_at_once(batch, uow_factory, gateways, now)
    for i, (inbox, parsed) in enumerate(rest):
        if stop is not None and stop.is_set():
            with uow_factory() as uow:
                uow.gateway_events.give_back([e for e, _ in rest[i:]], now())
                uow.commit()
            return len(batch) - (len(rest) - i)
        _apply_claimed(inbox, parsed, uow_factory, gateways, settings, now, policy)
    return len(batch)


def apply_until_stopped(
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: ApplySettings,
    stop: threading.Event,
    *,
    threads: int = 1,
    idle_seconds: float = 0.1,
    idle_max_seconds: float = 0.5,
    now: Callable[[], datetime] = utcnow,
    policy: ApplyPolicy = DEFAULT_APPLY_POLICY,
) -> None:
    """The worker's applier: claim, settle and apply back to back while events are due, a sleep of
    `idle_seconds` when none is, until `stop` is set. The sleep doubles while nothing comes, up to
    `idle_max_seconds`: a burst is followed closely, and an idle worker asks the database a few times
    a second, not ten.

    One thread claims; `threads` apply, one transaction per event. The next batch is claimed as soon
    as the appliers have no more than one event each left, so they never run dry while events are
    due, and an event never waits behind a whole batch held by one busy thread. On `stop`, nothing
    more is started: what was claimed and not started is given back at once, and the call returns
    when the events being applied are committed."""
    _Applier(uow_factory, gateways, settings, now, policy, stop, threads).run(idle_seconds, idle_max_seconds)


class _Applier:
    def __init__(self, uow_factory: UowFactory, gateways: Mapping[str, Gateway], settings: ApplySettings,
                 now: Callable[[], datetime], policy: ApplyPolicy, stop: threading.Event, threads: int) -> None:
        self.uow_factory, self.gateways, self.settings, self.now = uow_factory, gateways, settings, now
        self.policy, self.stop, self.threads = policy, stop, max(1, threads)
        self.lock = threading.Condition()
        self.outstanding = 0
        self.given_back: list[InboxEvent] = []

    def run(self, idle_seconds: float, idle_max_seconds: float) -> None:
        failures = 0
        idle = idle_seconds
        with ThreadPoolExecutor(self.threads, thread_name_prefix="webhook-applier") as pool:
            while not self.stop.is_set():
                with self.lock:
                    while self.outstanding > self.threads and not self.stop.is_set():
                        self.lock.wait(0.5)
                if self.stop.is_set():
                    break
                try:
                    rest = self._claim()
                except Exception:  # noqa: BLE001 - the database away for a moment: wait, and go on
                    failures += 1
                    logger.exception("webhook claim failed", extra={"failures": failures})
                    self.stop.wait(min(idle_seconds * 2 ** failures, 10.0))
                    continue
                failures = 0
                if rest is None:
                    self.stop.wait(idle)
                    idle = min(idle * 2, max(idle_seconds, idle_max_seconds))
                    continue
                idle = idle_seconds
                with self.lock:
                    self.outstanding += len(rest)
                for item in rest:
                    pool.submit(self._one, item)
        if self.given_back:
            with self.uow_factory() as uow:
                uow.gateway_events.give_back(self.given_back, self.now())
                uow.commit()

    def _claim(self) -> list[tuple[InboxEvent, _Parsed | None]] | None:
        t = self.now()
        with self.uow_factory() as uow:
            batch = uow.gateway_events.claim_due(t, t + timedelta(seconds=self.policy.lease_seconds),
                                                 self.policy.batch, self.policy.retry_share)
            uow.commit()
        if not batch:
            return None
        return _settle_at_once(batch, self.uow_factory, self.gateways, self.now)

    def _one(self, item: tuple[InboxEvent, _Parsed | None]) -> None:
        try:
            if self.stop.is_set():
                with self.lock:
                    self.given_back.append(item[0])
                return
            _apply_claimed(*item, self.uow_factory, self.gateways, self.settings, self.now, self.policy)
        except Exception:  # noqa: BLE001 - _apply_claimed keeps errors on the row; this is the database away
            logger.exception("webhook apply failed", extra={"gateway_event_id": item[0].gateway_event_id})
        finally:
            with self.lock:
                self.outstanding -= 1
                self.lock.notify()


@dataclass(frozen=True)
class _Parsed:
    """A stored event, read by its gateway's adapter: what it says about which kind of record."""

    event: WebhookEvent
    charge: ChargeResult | None = None
    refund: RefundResult | None = None
    payout: PayoutResult | None = None

    @property
    def acted_on(self) -> bool:
        if self.charge is not None:
            return self.charge.status is not ChargeStatus.PROCESSING  # no outcome yet: nothing to do
        return self.refund is not None or self.payout is not None

    @property
    def reference(self) -> str | None:
        """Our id, as the object carries it (metadata, notes, receipt, reference)."""
        return (self.charge.reference if self.charge is not None else None) or self.event.reference


def parse(inbox: InboxEvent, gateway: Gateway) -> _Parsed:
    """The stored event as its gateway's adapter reads it (no database, no network)."""
    event = WebhookEvent(
        inbox.gateway, inbox.gateway_event_id, inbox.event_type, inbox.object_id, inbox.reference,
        json.loads(inbox.payload),
    )
    # The adapter says what the event is about; None: not that kind. A type no kind claims is one we
    # do not act on: recorded, answered 200, nothing else.
    charge = gateway.charge_result_from_event(event)
    if charge is not None:
        return _Parsed(event, charge=charge)
    refund = gateway.refund_result_from_event(event)
    if refund is not None:
        return _Parsed(event, refund=refund)
    payout = gateway.payout_result_from_event(event)
    return _Parsed(event, payout=payout)


def _settle_at_once(
    batch: list[InboxEvent], uow_factory: UowFactory, gateways: Mapping[str, Gateway], now: Callable[[], datetime]
) -> list[tuple[InboxEvent, _Parsed | None]]:
    """Ours or not, for the whole batch in one transaction: a type we do not act on is IGNORED; an
    object without an id of ours, whose gateway id we do not hold either, is NOT_OURS. What is left
    is returned, to be applied one transaction each (None: the adapter could not read it; applying
    it again will say why, and keep the error)."""
    rest: list[tuple[InboxEvent, _Parsed | None]] = []
    settled: dict[str, list[InboxEvent]] = {IGNORED: [], NOT_OURS: []}
    with uow_factory() as uow:
        for inbox in batch:
            try:
                parsed = parse(inbox, gateways[inbox.gateway])
            except Exception:  # noqa: BLE001 - the per-event path keeps the error on the row
                rest.append((inbox, None))
                continue
            if not parsed.acted_on:
                settled[IGNORED].append(inbox)
            elif parsed.reference is None and _held(uow, parsed) is None:
                settled[NOT_OURS].append(inbox)
            else:
                rest.append((inbox, parsed))
        if settled[IGNORED] or settled[NOT_OURS]:
            t = now()
            for status, events in settled.items():
                if events:
                    uow.gateway_events.settle_many(events, status, t)
            uow.commit()
            logger.debug("webhooks settled at once", extra={k.lower(): len(v) for k, v in settled.items()})
    return rest


def _held(uow: AbstractUnitOfWork, parsed: _Parsed) -> Any:
    """The record of ours with the event's gateway id, if we hold one."""
    gateway = parsed.event.gateway
    if parsed.charge is not None and parsed.charge.gateway_payment_id:
        return uow.payments.find_by_gateway_id(gateway, parsed.charge.gateway_payment_id)
    if parsed.refund is not None and parsed.refund.gateway_refund_id:
        return uow.refunds.find_by_gateway_id(parsed.refund.gateway_refund_id)
    if parsed.payout is not None and parsed.payout.gateway_payout_id:
        return uow.withdrawals.find_by_gateway_id(parsed.payout.gateway_payout_id)
    return None


def _apply_claimed(
    inbox: InboxEvent,
    parsed: _Parsed | None,
    uow_factory: UowFactory,
    gateways: Mapping[str, Gateway],
    settings: ApplySettings,
    now: Callable[[], datetime],
    policy: ApplyPolicy,
) -> None:
    try:
        # One transaction: the record's move, its outbox row and the event's settlement commit
        # together. Lock order: the record rows first, then the event row (claims lock event rows
        # only, so no cycle).
        with uow_factory() as uow, audit.acting_as(audit.Actor("gateway", inbox.gateway), inbox.gateway_event_id):
            outcome = _apply(uow, parsed or parse(inbox, gateways[inbox.gateway]), settings, now)
            if not uow.gateway_events.settle(inbox.id, inbox.attempts, outcome, now()):
                # Our lease lapsed and another applier holds the event now: leaving the block rolls
                # our work back, and the holder applies it (once).
                logger.warning("webhook claim lapsed", extra={"gateway_event_id": inbox.gateway_event_id})
                return
            uow.commit()
    except UnknownObject as exc:
        _not_ours_yet(uow_factory, inbox, str(exc), now, policy)
        return
    except Exception as exc:  # noqa: BLE001 - keep the error on the row (dj-stripe), retry later
        logger.exception("webhook apply failed", extra={"gateway_event_id": inbox.gateway_event_id})
        _failed_attempt(uow_factory, inbox, f"{type(exc).__name__}: {exc}", now, policy)
        return
    logger.log(
        logging.INFO if outcome == APPLIED else logging.DEBUG,
        "webhook settled",
        extra={"gateway": inbox.gateway, "gateway_event_id": inbox.gateway_event_id, "type": inbox.event_type,
               "outcome": outcome},
    )


def _not_ours_yet(
    uow_factory: UowFactory, inbox: InboxEvent, error: str, now: Callable[[], datetime], policy: ApplyPolicy
) -> None:
    """An id of ours that we do not hold: look again later, for a bounded time, then surface it."""
    t = now()
    with uow_factory() as uow:
        if t - inbox.received_at >= timedelta(seconds=policy.retry_for_seconds):
            uow.gateway_events.settle(inbox.id, inbox.attempts, FAILED, t, error[:2000])
            logger.error(
                "webhook for an id of ours never found",
                extra={"gateway": inbox.gateway, "gateway_event_id": inbox.gateway_event_id,
                       "type": inbox.event_type, "reference": inbox.reference, "error": error[:500]},
            )
        else:
            uow.gateway_events.retry_later(inbox.id, inbox.attempts, t + policy.backoff(inbox.attempts), error)
        uow.commit()


def _failed_attempt(
    uow_factory: UowFactory, inbox: InboxEvent, error: str, now: Callable[[], datetime], policy: ApplyPolicy
) -> None:
    t = now()
    with uow_factory() as uow:
        if inbox.attempts >= MAX_ATTEMPTS:
            # Kept, with its error, for an operator: never deleted.
            uow.gateway_events.settle(inbox.id, inbox.attempts, FAILED, t, error[:2000])
        else:
            uow.gateway_events.retry_later(inbox.id, inbox.attempts, t + policy.backoff(inbox.attempts), error)
        uow.commit()


def apply_event(
    uow: AbstractUnitOfWork,
    inbox: InboxEvent,
    gateway: Gateway,
    settings: ApplySettings,
    now: Callable[[], datetime] = utcnow,
) -> str:
    """Apply one stored event inside the caller's unit of work; returns APPLIED, IGNORED or NOT_OURS.

    Raises UnknownObject for an id of ours that we do not hold (yet)."""
    return _apply(uow, parse(inbox, gateway), settings, now)


def _apply(uow: AbstractUnitOfWork, parsed: _Parsed, settings: ApplySettings, now: Callable[[], datetime]) -> str:
    if parsed.charge is not None:
        return _apply_charge(uow, parsed.event, parsed.charge, now, settings.payments)
    if parsed.refund is not None:
        return _apply_refund(uow, parsed.event, parsed.refund, now, settings.refunds)
    if parsed.payout is not None:
        return _apply_payout(uow, parsed.event, parsed.payout, now, settings.withdrawals)
    return IGNORED


def _ours(what: str, reference: str | None, gateway_id: str | None,
          by_reference: Callable[[str], Any], by_gateway_id: Callable[[str], Any]) -> Any:
    """The record of ours an event is about, or None if the object is not ours.

    An object that carries our id is ours even if we cannot find the record: UnknownObject (retried).
    One without our id is ours only if we hold its gateway id (an event that lost its metadata)."""
    record = by_reference(reference) if reference else None
    if record is None and gateway_id:
        record = by_gateway_id(gateway_id)
    if record is None and reference:
        raise UnknownObject(f"no {what} for reference={reference} gateway_id={gateway_id}")
    return record


# Each record is read with its row lock (FOR UPDATE) before its event is applied: appliers run in
# parallel, and two events about one record (a reversal and the settlement before it) then queue
# on the row, so each sees what the other left, and APPLIED means that this event moved it.


def _apply_charge(
    uow: AbstractUnitOfWork, event: WebhookEvent, charge: ChargeResult, now: Callable[[], datetime],
    settings: PaymentSettings,
) -> str:
    if charge.status is ChargeStatus.PROCESSING:
        return IGNORED  # no outcome yet, ours or not: nothing to look up

    def by_gateway_id(gid: str) -> Any:
        found = uow.payments.find_by_gateway_id(event.gateway, gid)
        return None if found is None else uow.payments.get(found.id, for_update=True)

    payment = _ours("payment", charge.reference or event.reference, charge.gateway_payment_id,
                    lambda ref: uow.payments.get(ref, for_update=True), by_gateway_id)
    if payment is None:
        return NOT_OURS
    if payment.gateway != event.gateway:
        raise UnknownObject(f"payment {payment.id} is at {payment.gateway}, the event came from {event.gateway}")
    before = (payment.status, payment.failure_code)
    after = apply_charge_result(uow, payment, charge, now(), settings)
    return APPLIED if (after.status, after.failure_code) != before else IGNORED


def _apply_refund(
    uow: AbstractUnitOfWork, event: WebhookEvent, result: RefundResult, now: Callable[[], datetime],
    settings: RefundSettings,
) -> str:
    refund = _ours("refund", event.reference, result.gateway_refund_id, uow.refunds.get,
                   uow.refunds.find_by_gateway_id)
    if refund is None:
        return NOT_OURS
    # Lock order (services/refunds.py): the payment row first, then its refunds. The refund read
    # again under that lock is the one any other path about it left.
    uow.payments.get(refund.payment_id, for_update=True)
    refund = uow.refunds.get(refund.id)
    assert refund is not None  # never deleted
    return APPLIED if apply_refund_event(uow, refund, result, now(), settings) else IGNORED


def _apply_payout(
    uow: AbstractUnitOfWork, event: WebhookEvent, result: PayoutResult, now: Callable[[], datetime],
    settings: WithdrawalSettings,
) -> str:
    def by_gateway_id(gid: str) -> Any:
        found = uow.withdrawals.find_by_gateway_id(gid)
        return None if found is None else uow.withdrawals.get(found.id, for_update=True)

    withdrawal = _ours("withdrawal", event.reference, result.gateway_payout_id,
                       lambda ref: uow.withdrawals.get(ref, for_update=True), by_gateway_id)
    if withdrawal is None:
        return NOT_OURS
    return APPLIED if apply_payout_event(uow, withdrawal, result, now(), settings) else IGNORED
