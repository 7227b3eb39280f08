"""The audit trail on SQLAlchemy: rows in the caller's transaction, the sealer, verify's walk, export, purge.

Writers only INSERT (no lock, no read): the rows of a transaction go in one multi-row INSERT just
before it commits.
The sealer is the one place the chain grows: it locks the head row (`audit_chain`, id 1,
SELECT ... FOR UPDATE), takes unsealed rows in id order, and fills their `seq`, `prev_hash` and
`hash` once. `seq` is the chain's order; a row whose transaction commits late (a lower id than rows
sealed already) simply gets a later `seq`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, case, delete, func, insert, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from ..domain import audit
from ..domain.audit import AuditEvent, ChainHead
from ..services.audit import AuditFilter, AuditLog, AuditStore, PurgeReport
from .deferred_writes import DEFER
from .orm import AuditChainRow, AuditEventRow

_audit: Table = AuditEventRow.__table__  # type: ignore[assignment]
_chain: Table = AuditChainRow.__table__  # type: ignore[assignment]
_INSERT = insert(_audit)
_FIELDS = [f.name for f in fields(AuditEvent)]
_WRITTEN = [n for n in _FIELDS if n not in {"id", "seq", "prev_hash", "hash"}]


def _values(event: AuditEvent) -> dict[str, Any]:
    return {n: getattr(event, n) for n in _WRITTEN}


def _event(row: Any) -> AuditEvent:
    return AuditEvent(**{n: row[n] for n in _FIELDS})


class SqlAuditLog(AuditLog):
    """Rows of the session's transaction, written as one multi-row INSERT just before it commits (a
    top-up's last phase has two: its status change and its API call), gone if it rolls back."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, event: AuditEvent) -> None:
        self.session.info.setdefault(_PENDING, []).append(_values(event))


_PENDING = "audit_rows_pending"


# On MySQL the rows go straight to the driver (one multi-row INSERT written here): a third of the client
# CPU of the same through SQLAlchemy's executemany, on the path of every top-up.
_COLUMNS, _MARKS = ", ".join(_WRITTEN), ", ".join(["%s"] * len(_WRITTEN))
_MYSQL_INSERT = f"INSERT INTO audit_events ({_COLUMNS}) VALUES ({_MARKS})"  # noqa: S608 - our column names


def _driver_row(values: dict[str, Any]) -> tuple[Any, ...]:
    at = values["occurred_at"]
    return tuple(at.astimezone(UTC).replace(tzinfo=None) if n == "occurred_at" else values[n] for n in _WRITTEN)


@sa_event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    rows = session.info.pop(_PENDING, None)
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name == "mysql":  # one multi-row INSERT, sent with the COMMIT (deferred_writes.py)
        sql = _MYSQL_INSERT + f", ({_MARKS})" * (len(rows) - 1)
        params = tuple(v for r in rows for v in _driver_row(r))
        conn.exec_driver_sql(sql, params, execution_options=DEFER)
    else:
        conn.execute(_INSERT, rows)


@sa_event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _mysql_seal_update(sealed: list[AuditEvent]) -> tuple[str, tuple[Any, ...]]:
    """One UPDATE for the batch, written for the driver: built through SQLAlchemy's `case()`, the
    coercion of its thousand literals was most of the sealer's time."""
    whens = " ".join(["WHEN %s THEN %s"] * len(sealed))
    marks = ", ".join(["%s"] * len(sealed))
    sql = (f"UPDATE audit_events SET seq = CASE id {whens} END, prev_hash = CASE id {whens} END, "  # noqa: S608
           f"hash = CASE id {whens} END WHERE id IN ({marks}) AND seq IS NULL")
    params: list[Any] = []
    for name in ("seq", "prev_hash", "hash"):
        for e in sealed:
            params += [e.id, getattr(e, name)]
    params += [e.id for e in sealed]
    return sql, tuple(params)


def _head(row: Any) -> ChainHead:
    return ChainHead(row["last_seq"], row["last_hash"], row["anchor_seq"], row["anchor_hash"], row["mac"])


class SqlAuditStore(AuditStore):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, event: AuditEvent) -> None:
        with self.engine.begin() as conn:
            conn.execute(_INSERT, _values(event))

    def seal(self, key: bytes, batch: int) -> int:
        with self.engine.begin() as conn:
            # The head's row lock makes sealers take turns; writers never touch it.
            row = conn.execute(select(_chain).where(_chain.c.id == 1).with_for_update()).mappings().one()
            head = _head(row)
            rows = conn.execute(
                select(_audit).where(_audit.c.seq.is_(None)).order_by(_audit.c.id).limit(batch)
            ).mappings().all()
            if not rows:
                return 0
            sealed = audit.seal(key, head, [_event(r) for r in rows])
            if conn.dialect.name == "mysql":
                conn.exec_driver_sql(*_mysql_seal_update(sealed))
            else:
                conn.execute(
                    update(_audit)
                    .where(_audit.c.id.in_([e.id for e in sealed]), _audit.c.seq.is_(None))
                    .values(
                        seq=case({e.id: e.seq for e in sealed}, value=_audit.c.id),
                        prev_hash=case({e.id: e.prev_hash for e in sealed}, value=_audit.c.id),
                        hash=case({e.id: e.hash for e in sealed}, value=_audit.c.id),
                    )
                )
            conn.execute(
                update(_chain).where(_chain.c.id == 1)
                .values(last_seq=head.last_seq, last_hash=head.last_hash, mac=head.mac)
            )
            return len(sealed)

    def head(self) -> ChainHead:
        with self.engine.connect() as conn:
            return _head(conn.execute(select(_chain).where(_chain.c.id == 1)).mappings().one())

    def sealed(self, after_seq: int, up_to_seq: int) -> Iterator[AuditEvent]:
        # Streamed in pages by seq (the unique index), so 100,000 rows never sit in memory at once.
        last = after_seq
        with self.engine.connect() as conn:
            while last < up_to_seq:
                rows = conn.execute(
                    select(_audit).where(_audit.c.seq > last, _audit.c.seq <= up_to_seq)
                    .order_by(_audit.c.seq).limit(10000)
                ).mappings().all()
                if not rows:
                    return
                for r in rows:
                    yield _event(r)
                last = rows[-1]["seq"]

    def unsealed_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(_audit.c.seq.is_(None))).scalar_one())

    def between(self, since: datetime | None, until: datetime | None) -> Iterator[AuditEvent]:
        last = 0
        with self.engine.connect() as conn:
            while True:
                stmt = select(_audit).where(_audit.c.id > last)
                if since is not None:
                    stmt = stmt.where(_audit.c.occurred_at >= since)
                if until is not None:
                    stmt = stmt.where(_audit.c.occurred_at < until)
                rows = conn.execute(stmt.order_by(_audit.c.id).limit(10000)).mappings().all()
                if not rows:
                    return
                for r in rows:
                    yield _event(r)
                last = rows[-1]["id"]

    def purge_before(self, key: bytes, before: datetime) -> PurgeReport:
        with self.engine.begin() as conn:
            head = _head(conn.execute(select(_chain).where(_chain.c.id == 1).with_for_update()).mappings().one())
            first_kept = conn.execute(
                select(func.min(_audit.c.seq)).where(_audit.c.seq > head.anchor_seq, _audit.c.occurred_at >= before)
            ).scalar_one()
            cut = head.last_seq if first_kept is None else int(first_kept) - 1
            if cut <= head.anchor_seq:
                return PurgeReport(0, head.anchor_seq)
            anchor_hash = conn.execute(select(_audit.c.hash).where(_audit.c.seq == cut)).scalar_one()
            head.anchor_seq, head.anchor_hash = cut, anchor_hash
            head.sign(key)
            conn.execute(
                update(_chain).where(_chain.c.id == 1)
                .values(anchor_seq=head.anchor_seq, anchor_hash=head.anchor_hash, mac=head.mac)
            )
        # The rows go in batches after the anchor moved: verify walks from the anchor, so a row not
        # deleted yet is simply not looked at.
        removed = 0
        while True:
            with self.engine.begin() as conn:
                ids = conn.execute(
                    select(_audit.c.id).where(_audit.c.seq <= cut).order_by(_audit.c.seq).limit(5000)
                ).scalars().all()
                if not ids:
                    break
                removed += conn.execute(delete(_audit).where(_audit.c.id.in_(ids))).rowcount
        return PurgeReport(removed, cut)

    def page(self, flt: AuditFilter, limit: int, before_id: int | None) -> list[AuditEvent]:
        stmt = select(_audit)
        if flt.resource_id is not None:
            stmt = stmt.where(_audit.c.resource_id == flt.resource_id)
        if flt.actor is not None:
            stmt = stmt.where(_audit.c.actor == flt.actor)
        if flt.action is not None:
            stmt = stmt.where(_audit.c.action == flt.action)
        if flt.since is not None:
            stmt = stmt.where(_audit.c.occurred_at >= flt.since)
        if flt.until is not None:
            stmt = stmt.where(_audit.c.occurred_at < flt.until)
        if before_id is not None:
            stmt = stmt.where(_audit.c.id < before_id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(_audit.c.id.desc()).limit(limit)).mappings().all()
        return [_event(r) for r in rows]
