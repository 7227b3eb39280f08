"""SQLAlchemy repositories: rows in, domain dataclasses out. Status changes are guarded UPDATEs."""

from __future__ import annotations

import base64
import functools
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    delete,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain import audit, lifecycle
from ..domain.events import Event, utcnow
from ..domain.payments import (
    IdempotencyRecord,
    InboxEvent,
    Page,
    PageCursor,
    Payment,
    PaymentMethod,
    Refund,
    field_names,
)
from ..domain.withdrawals import Withdrawal
from ..services import unit_of_work as abstract
from ..services.audit import AuditLog
from . import deferred_writes
from .audit_store import SqlAuditLog
from .deferred_writes import DEFER
from .orm import (
    Base,
    GatewayCustomerRow,
    GatewayEventRow,
    IdempotencyKeyRow,
    OutboxEventRow,
    PaymentMethodRow,
    PaymentRow,
    RefundRow,
    WithdrawalRequestRow,
)
from .outbox import serialize_event

T = TypeVar("T")


# The hot path (a top-up) runs Core statements built once, with values bound per call: SQLAlchemy
# then reuses their compiled form, instead of building and caching a new statement each time.
_payments: Table = PaymentRow.__table__  # type: ignore[assignment]
_idem: Table = IdempotencyKeyRow.__table__  # type: ignore[assignment]
_outbox: Table = OutboxEventRow.__table__  # type: ignore[assignment]
_INSERT_PAYMENT = insert(_payments)
_SELECT_PAYMENT = select(_payments).where(_payments.c.id == bindparam("pid"))
_SELECT_PAYMENT_FOR_UPDATE = _SELECT_PAYMENT.with_for_update()
_SELECT_PAYMENT_BY_GATEWAY_ID = select(_payments).where(
    _payments.c.gateway == bindparam("gw"), _payments.c.gateway_payment_id == bindparam("gid")
)
_INSERT_IDEM = insert(_idem)
_INSERT_OUTBOX = insert(_outbox)
_INSERT_INBOX = insert(GatewayEventRow.__table__)  # type: ignore[arg-type]
_PAYMENT_FIELDS = field_names(Payment)
_VELOCITY = select(
    func.count(_payments.c.id),
    # Only money that moved or may still move counts towards the amount limit.
    func.coalesce(
        # Literal comparisons, not IN (...): an IN list is an expanding parameter, re-rendered at each call.
        func.sum(case((or_(*(_payments.c.status == literal(s) for s in ("CAPTURED", "PENDING", "PENDING_3DS"))),
                       _payments.c.amount), else_=0)),
        0,
    ),
).where(_payments.c.user_id == bindparam("user_id"), _payments.c.created_at >= bindparam("since"))
_THIS_KEY = (_idem.c.caller == bindparam("k_caller"), _idem.c.key == bindparam("k_key"))
# The unique index behind (caller, key): a duplicate insert names it in MySQL's error 1062.
IDEMPOTENCY_KEY_INDEX = "uq_idempotency_keys_caller_key"
_NOTHING = select(literal(1))  # a statement for waiting writes to ride with
_COMPLETE_IDEM = (
    update(_idem)
    .where(*_THIS_KEY)
    .values(
        status="COMPLETED",
        response_status=bindparam("rstatus"),
        response_body=bindparam("rbody"),
        resource_id=bindparam("resource"),
        locked_until=None,
        recovery_point="FINISHED",
    )
)


def to_domain(cls: type[T], row: Any) -> T:
    return cls(**{name: getattr(row, name) for name in field_names(cls)})


def to_row_values(obj: Any, row_cls: type[Base]) -> dict[str, Any]:
    columns = set(row_cls.__table__.columns.keys())
    return {k: v for k, v in vars(obj).items() if k in columns}


def encode_cursor(cursor: PageCursor) -> str:
    raw = f"{cursor.created_at.isoformat()}|{cursor.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> PageCursor:
    """Raises ValueError for anything that is not a cursor we issued."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    created, _, pid = raw.partition("|")
    if not pid:
        raise ValueError("bad cursor")
    return PageCursor(datetime.fromisoformat(created), pid)


class SqlPaymentRepository(abstract.PaymentRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, payment: Payment) -> None:
        self.session.execute(_INSERT_PAYMENT, vars(payment), execution_options=DEFER)

    def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        # Core rows, not ORM objects: always read fresh, never a stale copy from the session.
        stmt = _SELECT_PAYMENT_FOR_UPDATE if for_update else _SELECT_PAYMENT
        row = self.session.execute(stmt, {"pid": payment_id}).mappings().one_or_none()
        if row is None:
            return None
        return Payment(**{name: row[name] for name in _PAYMENT_FIELDS})

    def list_for_user(self, user_id: str | None, status: str | None, limit: int, cursor: PageCursor | None) -> Page:
        stmt = select(PaymentRow)
        if user_id is not None:
            stmt = stmt.where(PaymentRow.user_id == user_id)
        if status is not None:
            stmt = stmt.where(PaymentRow.status == status)
        if cursor is not None:
            stmt = stmt.where(
                or_(
                    PaymentRow.created_at < cursor.created_at,
                    and_(PaymentRow.created_at == cursor.created_at, PaymentRow.id < cursor.id),
                )
            )
        stmt = stmt.order_by(PaymentRow.created_at.desc(), PaymentRow.id.desc()).limit(limit + 1)
        rows = self.session.execute(stmt).scalars().all()
        items = [to_domain(Payment, r) for r in rows[:limit]]
        next_cursor = PageCursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
        return Page(items, next_cursor)

    def velocity(self, user_id: str, since: datetime) -> tuple[int, int]:
        attempts, amount = self.session.execute(_VELOCITY, {"user_id": user_id, "since": since}).one()
        return int(attempts), int(amount)

    def device_seen(self, user_id: str, device_id: str) -> bool:
        row = self.session.execute(
            select(PaymentRow.id)
            .where(PaymentRow.user_id == user_id, PaymentRow.device_id == device_id, PaymentRow.status == "CAPTURED")
            .limit(1)
        ).first()
        return row is not None

    def find_by_gateway_id(self, gateway: str, gateway_payment_id: str) -> Payment | None:
        # The webhook applier asks this of every event without our id (most are not ours): a Core
        # statement built once, not an ORM query per call.
        row = self.session.execute(
            _SELECT_PAYMENT_BY_GATEWAY_ID, {"gw": gateway, "gid": gateway_payment_id}
        ).mappings().one_or_none()
        return None if row is None else Payment(**{name: row[name] for name in _PAYMENT_FIELDS})

    # --- refunds: the guard is in the WHERE clause, so concurrent refunds can never add up to more
    # than the payment captured, whatever else the caller did or did not lock ---
    def reserve_refund(self, payment_id: str, amount: int, at: datetime) -> bool:
        result = self.session.execute(
            update(PaymentRow)
            .where(
                PaymentRow.id == payment_id,
                PaymentRow.status == "CAPTURED",
                PaymentRow.refunded_amount + amount <= PaymentRow.amount,
            )
            .values(refunded_amount=PaymentRow.refunded_amount + amount, updated_at=at)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def release_refund(self, payment_id: str, amount: int, at: datetime) -> None:
        self.session.execute(
            update(PaymentRow)
            .where(PaymentRow.id == payment_id, PaymentRow.refunded_amount >= amount)
            .values(refunded_amount=PaymentRow.refunded_amount - amount, updated_at=at)
            .execution_options(synchronize_session=False)
        )

    # --- end refunds ---


class SqlPaymentMethodRepository(abstract.PaymentMethodRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, method: PaymentMethod) -> None:
        self.session.execute(insert(PaymentMethodRow).values(**to_row_values(method, PaymentMethodRow)))

    def get(self, method_id: str) -> PaymentMethod | None:
        stmt = select(PaymentMethodRow).where(PaymentMethodRow.id == method_id)
        row = self.session.execute(stmt).scalar_one_or_none()
        return None if row is None else to_domain(PaymentMethod, row)

    def list_active(self, user_id: str) -> list[PaymentMethod]:
        rows = self.session.execute(
            select(PaymentMethodRow)
            .where(PaymentMethodRow.user_id == user_id, PaymentMethodRow.deleted_at.is_(None))
            .order_by(PaymentMethodRow.created_at.desc(), PaymentMethodRow.id.desc())
        ).scalars()
        return [to_domain(PaymentMethod, r) for r in rows]

    def soft_delete(self, method_id: str, at: datetime) -> bool:
        result = self.session.execute(
            update(PaymentMethodRow)
            .where(PaymentMethodRow.id == method_id, PaymentMethodRow.deleted_at.is_(None))
            .values(deleted_at=at)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


class SqlCustomerRepository(abstract.CustomerRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, user_id: str, gateway: str) -> str | None:
        return self.session.execute(
            select(GatewayCustomerRow.customer_ref).where(
                GatewayCustomerRow.user_id == user_id, GatewayCustomerRow.gateway == gateway
            )
        ).scalar_one_or_none()

    def add(self, user_id: str, gateway: str, customer_ref: str, at: datetime) -> str:
        try:
            with self.session.begin_nested():
                self.session.execute(
                    insert(GatewayCustomerRow).values(
                        user_id=user_id, gateway=gateway, customer_ref=customer_ref, created_at=at
                    )
                )
        except IntegrityError:
            existing = self.get(user_id, gateway)
            assert existing is not None
            return existing
        return customer_ref


class SqlRefundRepository(abstract.RefundRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, refund: Refund) -> None:
        self.session.execute(insert(RefundRow).values(**to_row_values(refund, RefundRow)))

    def get(self, refund_id: str) -> Refund | None:
        row = self.session.execute(select(RefundRow).where(RefundRow.id == refund_id)).scalar_one_or_none()
        return None if row is None else to_domain(Refund, row)

    def find_by_gateway_id(self, gateway_refund_id: str) -> Refund | None:
        row = self.session.execute(
            select(RefundRow).where(RefundRow.gateway_refund_id == gateway_refund_id)
        ).scalar_one_or_none()
        return None if row is None else to_domain(Refund, row)

    def list_for_payment(self, payment_id: str) -> list[Refund]:
        rows = self.session.execute(
            select(RefundRow).where(RefundRow.payment_id == payment_id).order_by(RefundRow.created_at, RefundRow.id)
        ).scalars()
        return [to_domain(Refund, r) for r in rows]



# --- withdrawals ---------------------------------------------------------------------------


class SqlWithdrawalRepository(abstract.WithdrawalRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, withdrawal: Withdrawal) -> None:
        self.session.execute(insert(WithdrawalRequestRow).values(**to_row_values(withdrawal, WithdrawalRequestRow)))

    def get(self, withdrawal_id: str, *, for_update: bool = False) -> Withdrawal | None:
        stmt = select(WithdrawalRequestRow).where(WithdrawalRequestRow.id == withdrawal_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = self.session.execute(stmt).scalar_one_or_none()
        return None if row is None else to_domain(Withdrawal, row)

    def find_by_gateway_id(self, gateway_payout_id: str) -> Withdrawal | None:
        row = self.session.execute(
            select(WithdrawalRequestRow).where(WithdrawalRequestRow.gateway_payout_id == gateway_payout_id)
        ).scalar_one_or_none()
        return None if row is None else to_domain(Withdrawal, row)

# --- end withdrawals -----------------------------------------------------------------------


_RECORD_TABLES: dict[str, tuple[Table, type[Any]]] = {
    lifecycle.PAYMENT: (_payments, Payment),
    lifecycle.REFUND: (RefundRow.__table__, Refund),  # type: ignore[dict-item]
    lifecycle.WITHDRAWAL: (WithdrawalRequestRow.__table__, Withdrawal),  # type: ignore[dict-item]
}


@functools.lru_cache(maxsize=256)
def _move_statement_for(kind: str, target: str, allowed: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    table, _ = _RECORD_TABLES[kind]
    # The status guard as literal comparisons, not IN (...): an IN list is an expanding parameter
    # that SQLAlchemy re-renders on every execution; this statement is rendered once per shape.
    guard = or_(*(table.c.status == literal(s) for s in allowed))
    return (
        update(table)
        .where(table.c.id == bindparam("v_id"), guard)
        .values(status=literal(target), **{c: bindparam(f"v_{c}") for c in columns})
    )


def _move_statement(kind: str, target: str, allowed: tuple[str, ...], changes: Mapping[str, Any]) -> Any:
    # The hot path moves records with a handful of shapes: build each statement once (like the
    # prebuilt statements above) instead of a new UPDATE per call.
    return _move_statement_for(kind, target, allowed, tuple(changes))


def _moved_at(move: lifecycle.Move[Any]) -> datetime:
    at = move.changes.get("updated_at")
    return at if isinstance(at, datetime) else utcnow()


class SqlRecordRepository(abstract.RecordRepository):
    """Payments, refunds and withdrawals alike: guarded moves, claims and a sweep's bookkeeping.

    Core statements on the tables (not ORM objects): a move is one UPDATE whose WHERE clause is the
    guard, so of two paths racing to move the same record the database lets exactly one match; the
    other sees rowcount 0, writes no event, and re-reads.
    """

    def __init__(self, session: Session, outbox: SqlOutboxRepository, audit_log: AuditLog | None = None) -> None:
        self.session = session
        self.outbox = outbox
        # --- audit trail: every move writes its row in the same transaction (issue 12) ---
        self.audit_log = audit_log if audit_log is not None else SqlAuditLog(session)

    def get(self, kind: str, record_id: str, *, for_update: bool = False) -> Any | None:
        table, cls = _RECORD_TABLES[kind]
        stmt = select(table).where(table.c.id == record_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = self.session.execute(stmt).mappings().one_or_none()
        return None if row is None else cls(**{n: row[n] for n in field_names(cls)})

    def move(self, move: lifecycle.Move[Any]) -> bool:
        values = {f"v_{k}": v for k, v in move.changes.items()}
        values["v_id"] = move.record_id
        result = self.session.execute(_move_statement(move.kind, move.target, move.allowed_from, move.changes), values)
        moved = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if moved and move.event is not None:
            self.outbox.add(move.event)
        if moved:
            self.audit_log.add(
                audit.state_change(move.kind, move.record_id, move.target, _moved_at(move), move.changes)
            )
        return moved

    def update(self, kind: str, record_id: str, **changes: Any) -> None:
        table, _ = _RECORD_TABLES[kind]
        self.session.execute(update(table).where(table.c.id == record_id).values(**changes))

    def claim(self, kind: str, record_id: str, statuses: Collection[str], now: datetime, until: datetime) -> bool:
        table, _ = _RECORD_TABLES[kind]
        result = self.session.execute(
            update(table)
            .where(
                table.c.id == record_id,
                table.c.status.in_(list(statuses)),
                or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
            )
            .values(claimed_until=until)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def claim_due(
        self, kind: str, statuses: Collection[str], now: datetime, until: datetime, limit: int
    ) -> list[Any]:
        table, cls = _RECORD_TABLES[kind]
        # ix_<table>_status_next serves the scan. SKIP LOCKED: a replica running the same sweep
        # passes over the rows this one is claiming instead of waiting for them (MySQL 8,
        # MariaDB 10.6; SQLite ignores it and serialises writers anyway).
        rows = self.session.execute(
            select(table)
            .where(
                table.c.status.in_(list(statuses)),
                table.c.next_attempt_at <= now,
                or_(table.c.claimed_until.is_(None), table.c.claimed_until < now),
            )
            .order_by(table.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).mappings().all()
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        self.session.execute(update(table).where(table.c.id.in_(ids)).values(claimed_until=until))
        names = field_names(cls)
        return [cls(**{**{n: r[n] for n in names}, "claimed_until": until}) for r in rows]

    def release(
        self, kind: str, record_id: str, *, next_attempt_at: datetime, error: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        table, _ = _RECORD_TABLES[kind]
        values: dict[str, Any] = {"claimed_until": None, "next_attempt_at": next_attempt_at, "last_error": error}
        if count_attempt:
            values["attempts"] = table.c.attempts + 1
        self.session.execute(update(table).where(table.c.id == record_id).values(**values))


class SqlIdempotencyRepository(abstract.IdempotencyRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def insert(self, record: IdempotencyRecord) -> bool:
        values = {k: v for k, v in vars(record).items() if k != "id"}
        # On MySQL the INSERT waits for the request's next statement and rides with it (one round
        # trip less per keyed request); a duplicate then raises KeyTaken from that statement
        # (`translate_key_taken`). Elsewhere it runs here. The claim is alone in its transaction
        # (services/idempotency.py), so a duplicate just rolls it back: no SAVEPOINT round trips.
        try:
            result = self.session.execute(_INSERT_IDEM, values, execution_options=DEFER)
        except IntegrityError:
            self.session.rollback()
            return False
        pk = result.inserted_primary_key[0]  # type: ignore[attr-defined]
        record.id = 0 if pk is None else int(pk)  # none yet while the INSERT waits
        return True

    def confirm(self) -> None:
        if deferred_writes.waiting(self.session.connection().connection):
            self.session.execute(_NOTHING)  # sends the waiting INSERT with it

    def get(self, caller: str, key: str) -> IdempotencyRecord | None:
        row = self.session.execute(
            select(IdempotencyKeyRow).where(IdempotencyKeyRow.caller == caller, IdempotencyKeyRow.key == key)
        ).scalar_one_or_none()
        return None if row is None else to_domain(IdempotencyRecord, row)

    def take_over(self, caller: str, key: str, now: datetime, locked_until: datetime) -> bool:
        result = self.session.execute(
            update(_idem)
            .where(
                *_THIS_KEY,
                _idem.c.status == "IN_PROGRESS",
                or_(_idem.c.locked_until.is_(None), _idem.c.locked_until < now),
            )
            .values(locked_until=locked_until),
            {"k_caller": caller, "k_key": key},
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def complete(self, caller: str, key: str, status: int, body: str, resource_id: str | None) -> None:
        self.session.execute(
            _COMPLETE_IDEM,
            {"k_caller": caller, "k_key": key, "rstatus": status, "rbody": body, "resource": resource_id},
            execution_options=DEFER,
        )
        # --- audit trail: the API call's row, in the transaction that stores its answer (issue 12) ---
        row = audit.api_call(utcnow(), status, resource_id)
        if row is not None:
            SqlAuditLog(self.session).add(row)
            call = audit.current().call
            if call is not None:
                call.recorded_status = status

    def release(self, caller: str, key: str) -> None:
        self.session.execute(
            update(_idem).where(*_THIS_KEY).values(locked_until=None), {"k_caller": caller, "k_key": key}
        )

    def delete(self, caller: str, key: str) -> None:
        self.session.execute(delete(_idem).where(*_THIS_KEY), {"k_caller": caller, "k_key": key})


def translate_key_taken(engine: Engine) -> None:
    """A duplicate idempotency key raises `KeyTaken` from whichever statement sent its INSERT.

    On MySQL the key's INSERT rides with the request's next statement or its COMMIT (see
    `SqlIdempotencyRepository.insert`), so the error 1062 on `IDEMPOTENCY_KEY_INDEX` comes from a
    statement of some other repository: this turns it into the signal the service waits for
    (services/idempotency.py), wherever it surfaces, and nothing mistakes it for a duplicate of its own.
    """
    if engine.dialect.name != "mysql":
        return  # the INSERT runs where it is issued: `insert` sees its own IntegrityError

    @event.listens_for(engine, "handle_error")
    def _key_taken(ctx: Any) -> None:
        exc = ctx.original_exception
        args: tuple[Any, ...] = getattr(exc, "args", ())
        if len(args) >= 2 and args[0] == 1062 and IDEMPOTENCY_KEY_INDEX in str(args[1]):
            raise abstract.KeyTaken("this idempotency key exists already") from exc


# --- the webhook inbox: the applier's claim and settlement, built once -------------------------

_inbox: Table = GatewayEventRow.__table__  # type: ignore[assignment]
_INBOX_FIELDS = field_names(InboxEvent)


def _inbox_lane(status: str, due: Any, limit: str) -> Any:
    # A range of ix_gateway_events_status_next read in index order: LIMIT ends the scan, and the row
    # locks, after the rows taken, and SKIP LOCKED passes over those another applier is claiming.
    return (
        select(_inbox)
        .where(_inbox.c.status == status, due)
        .order_by(_inbox.c.next_attempt_at)
        .limit(bindparam(limit, type_=Integer))
        .with_for_update(skip_locked=True)
    )


_INBOX_LANES = (
    _inbox_lane("RECEIVED", _inbox.c.next_attempt_at <= bindparam("now"), "fresh"),
    _inbox_lane("RETRY", _inbox.c.next_attempt_at <= bindparam("now"), "retries"),
    # An applier that died left its lease behind: the event is taken again once the lease lapsed.
    _inbox_lane("PROCESSING", _inbox.c.next_attempt_at < bindparam("now"), "lapsed"),
)
# The lanes in one statement, a locking clause per UNION member (MySQL 8's query blocks each take one;
# tested on MariaDB 10.11): fresh events first, retries with a share of their own.
_CLAIM_INBOX = union_all(*_INBOX_LANES)
_HELD = and_(_inbox.c.id == bindparam("eid"), _inbox.c.status == "PROCESSING", _inbox.c.attempts == bindparam("held"))
_SETTLE_INBOX = update(_inbox).where(_HELD).values(
    status=bindparam("to"), applied_at=bindparam("t_at"), next_attempt_at=bindparam("t_next"),
    last_error=bindparam("err"),
)
_RETRY_INBOX = update(_inbox).where(_HELD).values(
    status="RETRY", next_attempt_at=bindparam("t_next"), last_error=bindparam("err")
)


class SqlGatewayEventRepository(abstract.GatewayEventRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, event: InboxEvent) -> bool:
        values = {k: v for k, v in vars(event).items() if k != "id"}
        try:
            # Alone in its transaction (the webhook view), so a duplicate just rolls it back.
            result = self.session.execute(_INSERT_INBOX, values)
        except IntegrityError:
            self.session.rollback()
            return False
        event.id = int(result.inserted_primary_key[0])  # type: ignore[attr-defined]
        return True

    def claim_due(self, now: datetime, lease_until: datetime, fresh: int, retries: int) -> list[InboxEvent]:
        params = {"now": now, "fresh": fresh, "retries": retries, "lapsed": retries}
        if self.session.get_bind().dialect.name == "sqlite":  # no row locks there; writers take turns anyway
            rows = [r for lane in _INBOX_LANES for r in self.session.execute(lane, params).mappings().all()]
        else:
            rows = list(self.session.execute(_CLAIM_INBOX, params).mappings().all())
        if not rows:
            return []
        self.session.execute(
            update(_inbox)
            .where(_inbox.c.id.in_([r["id"] for r in rows]))
            .values(status="PROCESSING", next_attempt_at=lease_until, attempts=_inbox.c.attempts + 1)
        )
        return [
            InboxEvent(**{**{n: r[n] for n in _INBOX_FIELDS}, "status": "PROCESSING", "next_attempt_at": lease_until,
                          "attempts": r["attempts"] + 1})
            for r in rows
        ]

    def settle(self, event_id: int, attempts: int, status: str, now: datetime, error: str | None = None) -> bool:
        result = self.session.execute(
            _SETTLE_INBOX, {"eid": event_id, "held": attempts, "to": status, "t_at": now, "t_next": now, "err": error}
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def settle_many(self, events: list[InboxEvent], status: str, now: datetime) -> int:
        settled = 0
        # A claim's lease is its token for the batch: an event another applier took over since has
        # a later one, and is left to it.
        for lease in {e.next_attempt_at for e in events}:
            result = self.session.execute(
                update(_inbox)
                .where(_inbox.c.id.in_([e.id for e in events if e.next_attempt_at == lease]),
                       _inbox.c.status == "PROCESSING", _inbox.c.next_attempt_at == lease)
                .values(status=status, applied_at=now, next_attempt_at=now, last_error=None)
            )
            settled += int(result.rowcount)  # type: ignore[attr-defined]
        return settled

    def retry_later(self, event_id: int, attempts: int, next_attempt_at: datetime, error: str) -> bool:
        result = self.session.execute(
            _RETRY_INBOX, {"eid": event_id, "held": attempts, "t_next": next_attempt_at, "err": error[:2000]}
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def give_back(self, events: list[InboxEvent], now: datetime) -> None:
        for status, group in (("RECEIVED", [e for e in events if e.attempts <= 1]),
                              ("RETRY", [e for e in events if e.attempts > 1])):
            for e in group:
                self.session.execute(
                    update(_inbox)
                    .where(_inbox.c.id == e.id, _inbox.c.status == "PROCESSING", _inbox.c.attempts == e.attempts)
                    .values(status=status, attempts=e.attempts - 1, next_attempt_at=now)
                )


def outbox_row(event: Event) -> dict[str, Any]:
    """An event's `outbox_events` row, as `SqlOutboxRepository.add` inserts it (benchmarks write the same)."""
    return {
        "event_id": event.id,
        "event_type": event.type.value,
        "subject": event.subject,
        "user_id": event.user_id,
        "payload": serialize_event(event),
        "created_at": event.time,
        "published_at": None,
    }


class SqlOutboxRepository(abstract.OutboxRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, event: Event) -> None:
        self.session.execute(_INSERT_OUTBOX, outbox_row(event), execution_options=DEFER)
