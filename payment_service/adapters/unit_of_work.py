"""The SQLAlchemy unit of work: one session, one transaction, rolled back unless committed."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from ..services.unit_of_work import AbstractUnitOfWork
from .repository import (
    SqlCustomerRepository,
    SqlGatewayEventRepository,
    SqlIdempotencyRepository,
    SqlOutboxRepository,
    SqlPaymentMethodRepository,
    SqlPaymentRepository,
    SqlRecordRepository,
    SqlRefundRepository,
    SqlWithdrawalRepository,
)


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def __enter__(self) -> SqlAlchemyUnitOfWork:
        self.session = self.session_factory()
        self.payments = SqlPaymentRepository(self.session)
        self.payment_methods = SqlPaymentMethodRepository(self.session)
        self.customers = SqlCustomerRepository(self.session)
        self.refunds = SqlRefundRepository(self.session)
        self.idempotency = SqlIdempotencyRepository(self.session)
        self.outbox = SqlOutboxRepository(self.session)
        self.gateway_events = SqlGatewayEventRepository(self.session)
        self.withdrawals = SqlWithdrawalRepository(self.session)
        self.records = SqlRecordRepository(self.session, self.outbox)
        return self

    def __exit__(self, *args: object) -> None:
        super().__exit__(*args)
        self.session.close()

    def commit(self) -> None:
        self.session.commit()

    def rollback(self) -> None:
        self.session.rollback()
