"""Daily settlement reconciliation: one day of a gateway's charges and refunds against ours; reports, never fixes.

A day is [00:00, 24:00) UTC. The gateway's side is every charge and refund it lists as created that day
(through the adapter's `list_charges` / `list_refunds`, all pages); ours is every payment and refund of
that gateway created that day. They are matched by the gateway's ids we stored (`gateway_payment_id`,
`gateway_refund_id`) and by our ids the gateway echoes back (metadata `payment_id` / `refund_id`, notes,
receipts). An object matched across midnight (ours at 23:59:59, theirs at 00:00:01) is no difference:
whatever one side holds for the day and the other does not is looked up one by one, on any day, before
it is called missing.

The differences (`KINDS`):

- `charged_not_captured`: the gateway took money (a succeeded charge) that is not a CAPTURED payment of
  ours with that charge: no payment of ours at all (a charge made in the Dashboard), one that FAILED or
  EXPIRED, or one captured through another attempt. A late success we refunded (rule 8) is no difference.
- `captured_not_charged`: a CAPTURED payment of ours with no succeeded charge at the gateway.
- `amount_mismatch`, `currency_mismatch`: both sides hold the charge (or refund), not for the same money.
- `refund_at_gateway_only`: a refund at the gateway (succeeded or pending) that we have not recorded, or
  recorded as FAILED.
- `refund_here_only`: a SUCCEEDED refund of ours the gateway does not have (or has as failed).

Our PENDING refunds without a gateway refund yet are the refund sweep's business, not a difference.
Nothing here changes a payment or a refund: each difference goes to the report for a person to look at.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from ..gateways.base import (
    ChargeStatus,
    Gateway,
    GatewayError,
    GatewayUnavailableError,
    RefundStatus,
    SettledCharge,
    SettledRefund,
)
from .unit_of_work import Clock

logger = logging.getLogger(__name__)

CHARGED_NOT_CAPTURED = "charged_not_captured"
CAPTURED_NOT_CHARGED = "captured_not_charged"
AMOUNT_MISMATCH = "amount_mismatch"
CURRENCY_MISMATCH = "currency_mismatch"
REFUND_AT_GATEWAY_ONLY = "refund_at_gateway_only"
REFUND_HERE_ONLY = "refund_here_only"
KINDS = (
    CHARGED_NOT_CAPTURED, CAPTURED_NOT_CHARGED, AMOUNT_MISMATCH, CURRENCY_MISMATCH, REFUND_AT_GATEWAY_ONLY,
    REFUND_HERE_ONLY,
)

CAPTURED = "CAPTURED"
REFUND_SUCCEEDED, REFUND_FAILED = "SUCCEEDED", "FAILED"
# What the gateway says about a refund that counts as money on its way back.
_LIVE_REFUND = (RefundStatus.SUCCEEDED, RefundStatus.PENDING)


@dataclass(frozen=True)
class OurPayment:
    """What reconciliation needs of one of our payments."""

    id: str
    gateway: str
    status: str
    amount: int
    currency: str
    gateway_payment_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class OurRefund:
    """What reconciliation needs of one of our refunds."""

    id: str
    payment_id: str
    gateway: str
    status: str
    amount: int
    currency: str
    gateway_refund_id: str | None
    # The charge it gives money back from: the refund's own (a late success's attempt), else its payment's.
    charge_id: str | None
    late: bool  # gives back a late success (rule 8), not a captured payment's money
    created_at: datetime


@dataclass(frozen=True)
class Difference:
    kind: str
    gateway: str
    detail: str
    payment_id: str | None = None
    refund_id: str | None = None
    gateway_payment_id: str | None = None
    gateway_refund_id: str | None = None
    ours: dict[str, Any] | None = None  # {"status", "amount", "currency"}
    theirs: dict[str, Any] | None = None  # {"status", "amount", "currency"}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DayReport:
    day: date
    gateway: str
    started_at: datetime
    finished_at: datetime | None = None
    gateway_charges: int = 0  # succeeded charges the gateway lists for the day
    gateway_refunds: int = 0  # succeeded or pending refunds it lists for the day
    our_payments: int = 0  # our CAPTURED payments created that day
    our_refunds: int = 0  # our SUCCEEDED refunds created that day
    looked_up: int = 0  # objects looked up one by one (across midnight), on either side
    differences: list[Difference] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for d in self.differences:
            out[d.kind] += 1
        return out

    def summary(self) -> str:
        """A few lines for a person: what was compared, and how many differences of each kind."""
        head = (
            f"reconciliation {self.gateway} {self.day.isoformat()}: "
            f"{'CLEAN' if self.clean else f'{len(self.differences)} DIFFERENCE(S)'}"
        )
        lines = [
            head,
            f"  gateway: {self.gateway_charges} charge(s), {self.gateway_refunds} refund(s); "
            f"ours: {self.our_payments} captured payment(s), {self.our_refunds} refund(s); "
            f"{self.looked_up} looked up across midnight",
        ]
        for kind, n in self.counts().items():
            if n:
                lines.append(f"  {kind}: {n}")
        for d in self.differences[:20]:
            ids = " ".join(x for x in (d.payment_id, d.refund_id, d.gateway_payment_id, d.gateway_refund_id) if x)
            lines.append(f"    {d.kind} {ids}: {d.detail}")
        if len(self.differences) > 20:
            lines.append(f"    ... and {len(self.differences) - 20} more in the JSON lines report")
        return "\n".join(lines)


class SettlementLedger(abc.ABC):
    """Our side of a day, read-only."""

    @abc.abstractmethod
    def payments_created(self, gateway: str, start: datetime, end: datetime) -> list[OurPayment]:
        """The gateway's payments of ours created in [start, end), any status."""

    @abc.abstractmethod
    def refunds_created(self, gateway: str, start: datetime, end: datetime) -> list[OurRefund]:
        """Refunds of the gateway's payments created in [start, end), any status."""

    @abc.abstractmethod
    def payments_matching(self, gateway: str, gateway_payment_ids: Iterable[str],
                          payment_ids: Iterable[str]) -> list[OurPayment]:
        """Payments of any day with one of these gateway ids, or one of these ids of ours."""

    @abc.abstractmethod
    def refunds_matching(self, gateway: str, gateway_refund_ids: Iterable[str], refund_ids: Iterable[str],
                         charge_ids: Iterable[str]) -> list[OurRefund]:
        """Refunds of any day with one of these gateway refund ids or ids of ours, or giving back one of
        these charges."""


class RunLog(abc.ABC):
    """One row per run (reconcile_runs)."""

    @abc.abstractmethod
    def start(self, day: date, gateway: str, trigger: str, now: datetime, *, exclusive: bool = False,
              stale_before: datetime | None = None) -> int | None:
        """Record a run as RUNNING; its id. With `exclusive` (the nightly job, one per day and gateway
        whatever the number of workers), None if that day's run finished already or is running; a FAILED
        one is taken over, and a RUNNING one started before `stale_before` (its runner died; None: never)."""

    @abc.abstractmethod
    def finish(self, run_id: int, report: DayReport, report_location: str | None) -> None: ...

    @abc.abstractmethod
    def fail(self, run_id: int, error: str, now: datetime) -> None: ...


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _state(status: Any, amount: int | None, currency: str | None) -> dict[str, Any]:
    return {"status": getattr(status, "value", status), "amount": amount, "currency": currency}


def _pick(charges: Iterable[SettledCharge]) -> dict[str, SettledCharge]:
    """By our payment id: the charge that took money wins over other attempts."""
    out: dict[str, SettledCharge] = {}
    for c in charges:
        if c.reference and (c.reference not in out or c.status is ChargeStatus.SUCCEEDED):
            out[c.reference] = c
    return out


def compare(
    gateway: str,
    day_charges: list[SettledCharge],
    day_refunds: list[SettledRefund],
    day_payments: list[OurPayment],
    day_our_refunds: list[OurRefund],
    *,
    other_charges: Iterable[SettledCharge] = (),
    other_refunds: Iterable[SettledRefund] = (),
    other_payments: Iterable[OurPayment] = (),
    other_our_refunds: Iterable[OurRefund] = (),
) -> list[Difference]:
    """The differences between one day of the gateway and one day of ours. `other_*` are objects of other
    days looked up to explain this day's: they are matched against, never reported themselves."""
    diffs: list[Difference] = []
    day_charge_ids = {c.gateway_payment_id for c in day_charges}
    charges = {c.gateway_payment_id: c for c in (*other_charges, *day_charges)}
    charges_by_ref = _pick(charges.values())
    payments = {p.id: p for p in (*other_payments, *day_payments)}
    payments_by_charge = {p.gateway_payment_id: p for p in payments.values() if p.gateway_payment_id}
    our_refunds = {r.id: r for r in (*other_our_refunds, *day_our_refunds)}
    our_refunds_by_gw = {r.gateway_refund_id: r for r in our_refunds.values() if r.gateway_refund_id}
    given_back = {r.charge_id for r in our_refunds.values() if r.late and r.status != REFUND_FAILED}

    def money(what: str, mine: tuple[int, str | None], gw: tuple[int, str | None], **fields: Any) -> None:
        # A currency the gateway did not say (a refund looked up one by one) is not compared.
        if gw[1] and mine[1] and mine[1].upper() != gw[1].upper():
            diffs.append(Difference(CURRENCY_MISMATCH, gateway, f"{what}: {mine[1]} here, {gw[1]} at the gateway",
                                    **fields))
        elif mine[0] != gw[0]:
            diffs.append(Difference(AMOUNT_MISMATCH, gateway, f"{what}: {mine[0]} here, {gw[0]} at the gateway",
                                    **fields))

    # Charges the gateway lists for the day, against ours.
    for c in day_charges:
        if c.status is not ChargeStatus.SUCCEEDED:
            continue  # no money taken; a CAPTURED payment of ours on it is found from our side below
        p = payments_by_charge.get(c.gateway_payment_id) or (payments.get(c.reference) if c.reference else None)
        theirs = _state(c.raw_status or c.status, c.amount, c.currency)
        ids = {"payment_id": p.id if p else c.reference, "gateway_payment_id": c.gateway_payment_id}
        if p is not None and p.status == CAPTURED and p.gateway_payment_id in (None, c.gateway_payment_id):
            money("charge", (p.amount, p.currency), (c.amount, c.currency), ours=_state(p.status, p.amount,
                  p.currency), theirs=theirs, **ids)
            continue
        if c.gateway_payment_id in given_back:
            continue  # a late success, refunded by us: recorded, no money kept
        if p is None:
            detail = "charged at the gateway, no payment of ours" + (
                f" (its reference {c.reference} is unknown here)" if c.reference else " (no reference of ours)")
        elif p.status == CAPTURED:
            detail = f"another attempt of {p.id}, which is CAPTURED here through {p.gateway_payment_id}"
        else:
            detail = f"charged at the gateway, {p.status} here"
        ours = _state(p.status, p.amount, p.currency) if p else None
        diffs.append(Difference(CHARGED_NOT_CAPTURED, gateway, detail, ours=ours, theirs=theirs, **ids))

    # Our captured payments of the day, against the gateway (on any day).
    for p in day_payments:
        if p.status != CAPTURED:
            continue
        charge = charges.get(p.gateway_payment_id) if p.gateway_payment_id else charges_by_ref.get(p.id)
        ids = {"payment_id": p.id, "gateway_payment_id": p.gateway_payment_id}
        ours = _state(p.status, p.amount, p.currency)
        if charge is None or charge.status is not ChargeStatus.SUCCEEDED:
            detail = "CAPTURED here, no charge at the gateway" if charge is None else (
                f"CAPTURED here, {charge.raw_status or charge.status.value} at the gateway")
            seen = None if charge is None else _state(charge.raw_status or charge.status, charge.amount,
                                                      charge.currency)
            diffs.append(Difference(CAPTURED_NOT_CHARGED, gateway, detail, ours=ours, theirs=seen, **ids))
        elif charge.gateway_payment_id not in day_charge_ids:  # a day's own pairs were compared above
            money("charge", (p.amount, p.currency), (charge.amount, charge.currency), ours=ours,
                  theirs=_state(charge.raw_status or charge.status, charge.amount, charge.currency), **ids)

    # Refunds the gateway lists for the day, against ours.
    day_refund_ids = {r.gateway_refund_id for r in day_refunds}
    refunds = {r.gateway_refund_id: r for r in (*other_refunds, *day_refunds)}
    refunds_by_ref = {r.reference: r for r in refunds.values() if r.reference}
    for r in day_refunds:
        if r.status not in _LIVE_REFUND:
            continue
        o = our_refunds_by_gw.get(r.gateway_refund_id) or (our_refunds.get(r.reference) if r.reference else None)
        theirs = _state(r.raw_status or r.status, r.amount, r.currency)
        ids = {"refund_id": o.id if o else r.reference, "payment_id": o.payment_id if o else None,
               "gateway_refund_id": r.gateway_refund_id, "gateway_payment_id": r.gateway_payment_id}
        if o is None or o.status == REFUND_FAILED:
            detail = "refunded at the gateway, " + ("no refund of ours" if o is None else "FAILED here")
            if o is None and ids["payment_id"] is None:
                paid = payments_by_charge.get(r.gateway_payment_id or "")
                ids["payment_id"] = paid.id if paid else None
            diffs.append(Difference(REFUND_AT_GATEWAY_ONLY, gateway, detail,
                                    ours=_state(o.status, o.amount, o.currency) if o else None, theirs=theirs, **ids))
            continue
        money("refund", (o.amount, o.currency), (r.amount, r.currency),
              ours=_state(o.status, o.amount, o.currency), theirs=theirs, **ids)

    # Our succeeded refunds of the day, against the gateway (on any day).
    for o in day_our_refunds:
        if o.status != REFUND_SUCCEEDED:
            continue
        refund = refunds.get(o.gateway_refund_id) if o.gateway_refund_id else refunds_by_ref.get(o.id)
        ids = {"refund_id": o.id, "payment_id": o.payment_id, "gateway_refund_id": o.gateway_refund_id,
               "gateway_payment_id": o.charge_id}
        ours = _state(o.status, o.amount, o.currency)
        if refund is None or refund.status not in _LIVE_REFUND:
            detail = "SUCCEEDED here, no refund at the gateway" if refund is None else (
                f"SUCCEEDED here, {refund.raw_status or refund.status.value} at the gateway")
            seen = None if refund is None else _state(refund.raw_status or refund.status, refund.amount,
                                                      refund.currency)
            diffs.append(Difference(REFUND_HERE_ONLY, gateway, detail, ours=ours, theirs=seen, **ids))
        elif refund.gateway_refund_id not in day_refund_ids:
            money("refund", (o.amount, o.currency), (refund.amount, refund.currency), ours=ours,
                  theirs=_state(refund.raw_status or refund.status, refund.amount, refund.currency), **ids)
    return diffs


# --- the run ------------------------------------------------------------------------------------


def _lookup_charge(gateway: Gateway, p: OurPayment) -> SettledCharge | None:
    """A charge of another day, one by one: by its id, or by our payment id when we never learnt it."""
    try:
        if p.gateway_payment_id:
            result = gateway.retrieve_charge(p.gateway_payment_id)
        else:
            found = gateway.find_charge(p.id)
            if found is None:
                return None
            result = found
    except GatewayUnavailableError:
        raise
    except GatewayError as exc:
        if exc.code == "not_found":
            return None
        raise
    if result.gateway_payment_id is None:
        return None
    return SettledCharge(result.gateway_payment_id, result.status, result.amount or 0, result.currency or "",
                         None, result.reference, result.raw_status)


def _lookup_refund(gateway: Gateway, o: OurRefund) -> SettledRefund | None:
    if not o.gateway_refund_id:
        return None
    try:
        result = gateway.retrieve_refund(o.gateway_refund_id, o.charge_id)
    except GatewayUnavailableError:
        raise
    except GatewayError as exc:
        if exc.code == "not_found":
            return None
        raise
    return SettledRefund(result.gateway_refund_id, o.charge_id, result.status, result.amount, None, None, None,
                         result.status.value)


def reconcile_day(
    gateway: Gateway,
    ledger: SettlementLedger,
    day: date,
    clock: Clock,
) -> DayReport:
    """Compare one day of one gateway; the report of what differs. Gateway calls are made outside any
    transaction (the ledger reads are short, separate ones)."""
    start, end = day_bounds(day)
    report = DayReport(day=day, gateway=gateway.name, started_at=clock())
    day_charges = list(gateway.list_charges(start, end))
    day_refunds = list(gateway.list_refunds(start, end))
    day_payments = ledger.payments_created(gateway.name, start, end)
    day_our_refunds = ledger.refunds_created(gateway.name, start, end)

    # Ours for the gateway's objects we do not hold for the day (made on another day, or not by us).
    known_charges = {p.gateway_payment_id for p in day_payments if p.gateway_payment_id}
    known_payments = {p.id for p in day_payments}
    money_taken = [c for c in day_charges if c.status is ChargeStatus.SUCCEEDED]
    missing = [c for c in money_taken if c.gateway_payment_id not in known_charges]
    other_payments = ledger.payments_matching(
        gateway.name, [c.gateway_payment_id for c in missing],
        [c.reference for c in missing if c.reference and c.reference not in known_payments],
    ) if missing else []
    known_refunds = {r.gateway_refund_id for r in day_our_refunds if r.gateway_refund_id} | {
        r.id for r in day_our_refunds}
    missing_refunds = [r for r in day_refunds if r.gateway_refund_id not in known_refunds
                       and (r.reference is None or r.reference not in known_refunds)]
    captured_by = {p.gateway_payment_id for p in (*day_payments, *other_payments) if p.status == CAPTURED}
    unexplained = [c.gateway_payment_id for c in money_taken if c.gateway_payment_id not in captured_by]
    other_our_refunds = ledger.refunds_matching(
        gateway.name, [r.gateway_refund_id for r in missing_refunds],
        [r.reference for r in missing_refunds if r.reference], unexplained,
    ) if missing_refunds or unexplained else []

    # The gateway's for our objects it does not list for the day, one by one.
    listed = {c.gateway_payment_id for c in day_charges}
    listed_by_ref = {c.reference for c in day_charges if c.reference}
    other_charges = []
    for p in day_payments:
        if p.status == CAPTURED and (p.gateway_payment_id not in listed if p.gateway_payment_id
                                     else p.id not in listed_by_ref):
            found = _lookup_charge(gateway, p)
            if found is not None:
                other_charges.append(found)
            report.looked_up += 1
    listed_refunds = {r.gateway_refund_id for r in day_refunds}
    listed_refund_refs = {r.reference for r in day_refunds if r.reference}
    other_refunds = []
    for o in day_our_refunds:
        if (o.status == REFUND_SUCCEEDED and o.gateway_refund_id not in listed_refunds
                and o.id not in listed_refund_refs):
            found_refund = _lookup_refund(gateway, o)
            if found_refund is not None:
                other_refunds.append(found_refund)
            report.looked_up += 1
    report.looked_up += len(other_payments) + len(other_our_refunds)

    report.differences = compare(
        gateway.name, day_charges, day_refunds, day_payments, day_our_refunds,
        other_charges=other_charges, other_refunds=other_refunds, other_payments=other_payments,
        other_our_refunds=other_our_refunds,
    )
    report.gateway_charges = len(money_taken)
    report.gateway_refunds = sum(1 for r in day_refunds if r.status in _LIVE_REFUND)
    report.our_payments = sum(1 for p in day_payments if p.status == CAPTURED)
    report.our_refunds = sum(1 for r in day_our_refunds if r.status == REFUND_SUCCEEDED)
    report.finished_at = clock()
    return report


def run_day(
    gateway: Gateway,
    ledger: SettlementLedger,
    runs: RunLog,
    day: date,
    clock: Clock,
    *,
    write_report: Callable[[DayReport], str | None] | None = None,
    trigger: str = "cli",
    exclusive: bool = False,
    stale_after: timedelta = timedelta(hours=1),
) -> DayReport | None:
    """`reconcile_day` recorded as a run (reconcile_runs) with its report written; None when `exclusive`
    and another process has, or had, that day's run. A failure is recorded on the run, then raised."""
    now = clock()
    run_id = runs.start(day, gateway.name, trigger, now, exclusive=exclusive, stale_before=now - stale_after)
    if run_id is None:
        return None
    try:
        report = reconcile_day(gateway, ledger, day, clock)
        location = write_report(report) if write_report is not None else None
        runs.finish(run_id, report, location)
    except Exception as exc:
        runs.fail(run_id, f"{type(exc).__name__}: {exc}"[:1000], clock())
        raise
    logger.info(
        "settlement reconciliation finished",
        extra={"gateway": gateway.name, "day": day.isoformat(), "differences": len(report.differences),
               "report": location},
    )
    return report
