"""SQLAlchemy repositories: rows in, domain dataclasses out. Status changes are guarded UPDATEs."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Table, and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain.events import Event
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
from ..domain.withdrawals import Withdrawal  # --- withdrawals ---
from ..services import unit_of_work as abstract
from .orm import (
    Base,
    GatewayCustomerRow,
    GatewayEventRow,
    IdempotencyKeyRow,
    OutboxEventRow,
    PaymentMethodRow,
    PaymentRow,
    RefundRow,
    WithdrawalRequestRow,  # --- withdrawals ---
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
_INSERT_IDEM = insert(_idem)
_INSERT_OUTBOX = insert(_outbox)
_INSERT_INBOX = insert(GatewayEventRow.__table__)  # type: ignore[arg-type]
_PAYMENT_FIELDS = field_names(Payment)
_VELOCITY = select(
    func.count(_payments.c.id),
    # Only money that moved or may still move counts towards the amount limit.
    func.coalesce(
        func.sum(case((_payments.c.status.in_(["CAPTURED", "PENDING", "PENDING_3DS"]), _payments.c.amount), else_=0)),
        0,
    ),
).where(_payments.c.user_id == bindparam("user_id"), _payments.c.created_at >= bindparam("since"))
_COMPLETE_IDEM = (
    update(_idem)
    .where(_idem.c.id == bindparam("rid"))
    .values(
        status="COMPLETED",
        response_status=bindparam("rstatus"),
        response_body=bindparam("rbody"),
        resource_id=bindparam("resource"),
        locked_until=None,
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
        self.session.execute(_INSERT_PAYMENT, vars(payment))

    def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None:
        # Core rows, not ORM objects: always read fresh, never a stale copy from the session.
        stmt = _SELECT_PAYMENT_FOR_UPDATE if for_update else _SELECT_PAYMENT
        row = self.session.execute(stmt, {"pid": payment_id}).mappings().one_or_none()
        if row is None:
            return None
        return Payment(**{name: row[name] for name in _PAYMENT_FIELDS})

    def transition(self, payment_id: str, new_status: str, allowed_from: Sequence[str], **changes: Any) -> bool:
        # The guard is in the WHERE clause: of two paths racing to move the same payment, the
        # database lets exactly one UPDATE match; the other sees rowcount 0 and does nothing.
        # Core UPDATEs (on the table, not the mapped class): the ORM's bulk-update machinery
        # costs more CPU than the statement itself on this hot path.
        result = self.session.execute(
            update(_payments)
            .where(_payments.c.id == payment_id, _payments.c.status.in_([str(s) for s in allowed_from]))
            .values(status=new_status, **changes)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def update(self, payment_id: str, **changes: Any) -> None:
        self.session.execute(update(_payments).where(_payments.c.id == payment_id).values(**changes))

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
        row = self.session.execute(
            select(PaymentRow).where(PaymentRow.gateway == gateway, PaymentRow.gateway_payment_id == gateway_payment_id)
        ).scalar_one_or_none()
        return None if row is None else to_domain(Payment, row)


    def expired_3ds(self, now: datetime, limit: int) -> list[Payment]:
        rows = self.session.execute(
            select(_payments)
            .where(_payments.c.status == "PENDING_3DS", _payments.c.expires_at < now)
            .order_by(_payments.c.expires_at)
            .limit(limit)
        ).mappings()
        return [Payment(**{n: r[n] for n in _PAYMENT_FIELDS}) for r in rows]

    def stuck_pending(self, updated_before: datetime, limit: int) -> list[Payment]:
        rows = self.session.execute(
            select(_payments)
            .where(_payments.c.status == "PENDING", _payments.c.updated_at < updated_before)
            .order_by(_payments.c.updated_at)
            .limit(limit)
        ).mappings()
        return [Payment(**{n: r[n] for n in _PAYMENT_FIELDS}) for r in rows]

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

    # --- refunds ---
    def transition(self, refund_id: str, new_status: str, allowed_from: Sequence[str], **changes: Any) -> bool:
        result = self.session.execute(
            update(RefundRow)
            .where(RefundRow.id == refund_id, RefundRow.status.in_([str(s) for s in allowed_from]))
            .values(status=new_status, **changes)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def update(self, refund_id: str, **changes: Any) -> None:
        self.session.execute(
            update(RefundRow)
            .where(RefundRow.id == refund_id)
            .values(**changes)
            .execution_options(synchronize_session=False)
        )

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

    def stuck_pending(self, updated_before: datetime, limit: int) -> list[Refund]:
        # ix_refunds_status_updated serves this scan.
        rows = self.session.execute(
            select(RefundRow)
            .where(RefundRow.status == "PENDING", RefundRow.updated_at < updated_before)
            .order_by(RefundRow.updated_at)
            .limit(limit)
        ).scalars()
        return [to_domain(Refund, r) for r in rows]

    # --- end refunds ---


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

    def transition(
        self,
        withdrawal_id: str,
        new_status: str,
        allowed_from: Sequence[str],
        *,
        updated_before: datetime | None = None,
        **changes: Any,
    ) -> bool:
        t = WithdrawalRequestRow
        stmt = update(t).where(t.id == withdrawal_id, t.status.in_([str(s) for s in allowed_from]))
        if updated_before is not None:
            stmt = stmt.where(t.updated_at < updated_before)
        result = self.session.execute(
            stmt.values(status=new_status, **changes).execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def update(self, withdrawal_id: str, **changes: Any) -> None:
        self.session.execute(
            update(WithdrawalRequestRow)
            .where(WithdrawalRequestRow.id == withdrawal_id)
            .values(**changes)
            .execution_options(synchronize_session=False)
        )

    def find_by_gateway_id(self, gateway_payout_id: str) -> Withdrawal | None:
        row = self.session.execute(
            select(WithdrawalRequestRow).where(WithdrawalRequestRow.gateway_payout_id == gateway_payout_id)
        ).scalar_one_or_none()
        return None if row is None else to_domain(Withdrawal, row)

    def stuck(self, status: str, updated_before: datetime, limit: int) -> list[Withdrawal]:
        # ix_withdrawal_requests_status_updated serves this scan.
        t = WithdrawalRequestRow
        rows = self.session.execute(
            select(t).where(t.status == status, t.updated_at < updated_before).order_by(t.updated_at).limit(limit)
        ).scalars()
        return [to_domain(Withdrawal, r) for r in rows]


# --- end withdrawals -----------------------------------------------------------------------


class SqlIdempotencyRepository(abstract.IdempotencyRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def insert(self, record: IdempotencyRecord) -> bool:
        values = {k: v for k, v in vars(record).items() if k != "id"}
        # The claim is alone in its transaction (services/idempotency.py), so a duplicate just
        # rolls it back; no SAVEPOINT round trips on the hot path.
        try:
            result = self.session.execute(_INSERT_IDEM, values)
        except IntegrityError:
            self.session.rollback()
            return False
        record.id = int(result.inserted_primary_key[0])  # type: ignore[attr-defined]
        return True

    def get(self, caller: str, key: str) -> IdempotencyRecord | None:
        row = self.session.execute(
            select(IdempotencyKeyRow).where(IdempotencyKeyRow.caller == caller, IdempotencyKeyRow.key == key)
        ).scalar_one_or_none()
        return None if row is None else to_domain(IdempotencyRecord, row)

    def take_over(self, record_id: int, now: datetime, locked_until: datetime) -> bool:
        result = self.session.execute(
            update(IdempotencyKeyRow)
            .where(
                IdempotencyKeyRow.id == record_id,
                IdempotencyKeyRow.status == "IN_PROGRESS",
                or_(IdempotencyKeyRow.locked_until.is_(None), IdempotencyKeyRow.locked_until < now),
            )
            .values(locked_until=locked_until)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def complete(self, record_id: int, status: int, body: str, resource_id: str | None) -> None:
        self.session.execute(
            _COMPLETE_IDEM, {"rid": record_id, "rstatus": status, "rbody": body, "resource": resource_id}
        )

    def release(self, record_id: int) -> None:
        self.session.execute(
            update(IdempotencyKeyRow).where(IdempotencyKeyRow.id == record_id).values(locked_until=None)
        )

    def delete(self, record_id: int) -> None:
        self.session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.id == record_id))


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

    def due(self, now: datetime, limit: int) -> list[InboxEvent]:
        t = GatewayEventRow
        rows = self.session.execute(
            select(t)
            .where(
                or_(
                    and_(t.status.in_(["RECEIVED", "RETRY"]), t.next_attempt_at <= now),
                    # An applier that died mid-way left its lease behind; take the event back.
                    and_(t.status == "PROCESSING", t.next_attempt_at < now),
                )
            )
            .order_by(t.id)
            .limit(limit)
        ).scalars()
        return [to_domain(InboxEvent, r) for r in rows]

    def claim(self, event_id: int, now: datetime, lease_until: datetime) -> bool:
        t = GatewayEventRow
        result = self.session.execute(
            update(t)
            .where(
                t.id == event_id,
                or_(
                    and_(t.status.in_(["RECEIVED", "RETRY"]), t.next_attempt_at <= now),
                    and_(t.status == "PROCESSING", t.next_attempt_at < now),
                ),
            )
            .values(status="PROCESSING", next_attempt_at=lease_until, attempts=t.attempts + 1)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def finish(self, event_id: int, status: str, now: datetime, error: str | None = None) -> None:
        self.session.execute(
            update(GatewayEventRow)
            .where(GatewayEventRow.id == event_id)
            .values(status=status, applied_at=now, last_error=error)
        )

    def retry_later(self, event_id: int, next_attempt_at: datetime, error: str) -> None:
        self.session.execute(
            update(GatewayEventRow)
            .where(GatewayEventRow.id == event_id)
            .values(status="RETRY", next_attempt_at=next_attempt_at, last_error=error[:2000])
        )


class SqlOutboxRepository(abstract.OutboxRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, event: Event) -> None:
        self.session.execute(
            _INSERT_OUTBOX,
            {
                "event_id": event.id,
                "event_type": event.type.value,
                "subject": event.subject,
                "user_id": event.user_id,
                "payload": serialize_event(event),
                "created_at": event.time,
                "published_at": None,
            },
        )
