"""Settlement reconciliation's storage: our side of a day (read-only), the reconcile_runs rows, the report files.

Reads are short read-only transactions of their own, made between the gateway's list calls, never
around them. A day is read by creation time through `ix_payments_gateway_created` and
`ix_refunds_created` (migration 0005).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, Table, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..services.reconciliation import DayReport, OurPayment, OurRefund, RunLog, SettlementLedger
from .orm import PaymentRow, ReconcileRunRow, RefundRow

logger = logging.getLogger(__name__)

_p: Table = PaymentRow.__table__  # type: ignore[assignment]
_r: Table = RefundRow.__table__  # type: ignore[assignment]
_runs: Table = ReconcileRunRow.__table__  # type: ignore[assignment]

CHUNK = 500  # ids per IN (...) list
STORED_DIFFERENCES = 1000  # differences kept on the run's row; the report file has them all

_PAYMENT_COLUMNS = (_p.c.id, _p.c.gateway, _p.c.status, _p.c.amount, _p.c.currency, _p.c.gateway_payment_id,
                    _p.c.created_at)
_REFUND_SELECT = (
    select(
        _r.c.id, _r.c.payment_id, _p.c.gateway, _r.c.status, _r.c.amount, _r.c.currency, _r.c.gateway_refund_id,
        func.coalesce(_r.c.gateway_payment_id, _p.c.gateway_payment_id), _r.c.gateway_payment_id, _r.c.created_at,
    ).select_from(_r.join(_p, _p.c.id == _r.c.payment_id))
)


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    items = sorted(set(values))
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


class SqlSettlementLedger(SettlementLedger):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _payments(self, query: Select[Any]) -> list[OurPayment]:
        with self.engine.connect() as conn:
            return [OurPayment(*row) for row in conn.execute(query)]

    def _refunds(self, query: Select[Any]) -> list[OurRefund]:
        with self.engine.connect() as conn:
            return [
                OurRefund(rid, pid, gw, status, amount, currency, gref, charge, own_charge is not None, created)
                for rid, pid, gw, status, amount, currency, gref, charge, own_charge, created in conn.execute(query)
            ]

    def payments_created(self, gateway: str, start: datetime, end: datetime) -> list[OurPayment]:
        return self._payments(
            select(*_PAYMENT_COLUMNS).where(_p.c.gateway == gateway, _p.c.created_at >= start, _p.c.created_at < end)
        )

    def refunds_created(self, gateway: str, start: datetime, end: datetime) -> list[OurRefund]:
        return self._refunds(
            _REFUND_SELECT.where(_p.c.gateway == gateway, _r.c.created_at >= start, _r.c.created_at < end)
        )

    def payments_matching(self, gateway: str, gateway_payment_ids: Iterable[str],
                          payment_ids: Iterable[str]) -> list[OurPayment]:
        found: dict[str, OurPayment] = {}
        for chunk in _chunks(gateway_payment_ids):
            for p in self._payments(select(*_PAYMENT_COLUMNS).where(_p.c.gateway == gateway,
                                                                    _p.c.gateway_payment_id.in_(chunk))):
                found[p.id] = p
        for chunk in _chunks(payment_ids):
            for p in self._payments(select(*_PAYMENT_COLUMNS).where(_p.c.id.in_(chunk))):
                found[p.id] = p  # any gateway: a reference of ours on the wrong gateway is a difference too
        return list(found.values())

    def refunds_matching(self, gateway: str, gateway_refund_ids: Iterable[str], refund_ids: Iterable[str],
                         charge_ids: Iterable[str]) -> list[OurRefund]:
        found: dict[str, OurRefund] = {}
        for column, values in ((_r.c.gateway_refund_id, gateway_refund_ids), (_r.c.id, refund_ids),
                               (_r.c.gateway_payment_id, charge_ids)):
            for chunk in _chunks(values):
                for r in self._refunds(_REFUND_SELECT.where(_p.c.gateway == gateway, column.in_(chunk))):
                    found[r.id] = r
        return list(found.values())


class SqlRunLog(RunLog):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, day: date, gateway: str, trigger: str, now: datetime, *, exclusive: bool = False,
              stale_before: datetime | None = None) -> int | None:
        claim_key = f"{trigger}:{day.isoformat()}:{gateway}" if exclusive else None
        row = {"day": day, "gateway": gateway, "trigger": trigger, "claim_key": claim_key, "status": "RUNNING",
               "started_at": now}
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(_runs).values(**row))
                return int(result.inserted_primary_key[0])  # type: ignore[index]
        except IntegrityError:
            if claim_key is None:
                raise
        # The day's exclusive run exists: take it over only if it failed, or its runner died (stale).
        retake = _runs.c.status == "FAILED"
        if stale_before is not None:
            retake = or_(retake, and_(_runs.c.status == "RUNNING", _runs.c.started_at < stale_before))
        with self.engine.begin() as conn:
            run_id = conn.execute(select(_runs.c.id).where(_runs.c.claim_key == claim_key)).scalar_one()
            taken = conn.execute(
                update(_runs).where(_runs.c.id == run_id, retake).values(
                    status="RUNNING", started_at=now, finished_at=None, error=None)
            ).rowcount
        return int(run_id) if taken == 1 else None

    def finish(self, run_id: int, report: DayReport, report_location: str | None) -> None:
        stored = {"counts": report.counts(), "looked_up": report.looked_up,
                  "differences": [d.to_json() for d in report.differences[:STORED_DIFFERENCES]],
                  "truncated": len(report.differences) > STORED_DIFFERENCES}
        with self.engine.begin() as conn:
            conn.execute(update(_runs).where(_runs.c.id == run_id).values(
                status="CLEAN" if report.clean else "DIFFERENCES", finished_at=report.finished_at,
                gateway_charges=report.gateway_charges, gateway_refunds=report.gateway_refunds,
                our_payments=report.our_payments, our_refunds=report.our_refunds,
                differences=len(report.differences), report_location=report_location,
                report=json.dumps(stored, sort_keys=True), error=None,
            ))

    def fail(self, run_id: int, error: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(_runs).where(_runs.c.id == run_id).values(status="FAILED", finished_at=now,
                                                                          error=error))

    def runs(self, day: date | None = None, gateway: str | None = None) -> Sequence[Any]:
        """The rows, newest first (for the CLI and tests)."""
        query = select(_runs).order_by(_runs.c.id.desc())
        if day is not None:
            query = query.where(_runs.c.day == day)
        if gateway is not None:
            query = query.where(_runs.c.gateway == gateway)
        with self.engine.connect() as conn:
            return conn.execute(query).mappings().all()


def report_paths(out_dir: str | os.PathLike[str], report: DayReport) -> tuple[Path, Path]:
    stem = f"reconcile-{report.gateway}-{report.day.isoformat()}"
    base = Path(out_dir)
    return base / f"{stem}.jsonl", base / f"{stem}.txt"


def write_report(out_dir: str | os.PathLike[str], report: DayReport) -> str:
    """The differences as JSON lines (one object per difference; none on a clean day) and the summary as
    text, side by side in `out_dir`; each file written whole, then renamed into place. Returns the JSON
    lines path."""
    jsonl, txt = report_paths(out_dir, report)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"day": report.day.isoformat(), **d.to_json()}, sort_keys=True) + "\n"
                    for d in report.differences)
    for path, text in ((jsonl, lines), (txt, report.summary() + "\n")):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return str(jsonl)
