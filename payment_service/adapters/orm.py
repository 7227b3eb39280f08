"""SQLAlchemy 2 tables. Schema changes go through Alembic (migrations/); a test keeps the two in step.

Times are stored as naive UTC DATETIME(6) (MySQL has no zone-aware type) and come back aware.
Money is BIGINT minor units. Long JSON documents are TEXT (MEDIUMTEXT on MySQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Alembic's recommended convention (naming.rst): every constraint gets a predictable name,
# so later migrations can drop or alter it on MySQL and SQLite alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "mysql":
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql").with_variant(mysql.MEDIUMTEXT(), "mariadb")
# SQLite only auto-increments INTEGER PRIMARY KEY columns.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PaymentRow(Base):
    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    gateway: Mapped[str] = mapped_column(String(16))
    gateway_payment_id: Mapped[str | None] = mapped_column(String(64))
    payment_method_id: Mapped[str | None] = mapped_column(String(40))  # our pm_..., when a saved method was used
    gateway_token: Mapped[str | None] = mapped_column(String(128))  # the gateway's token reference, never card data
    card_brand: Mapped[str | None] = mapped_column(String(32))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    card_country: Mapped[str | None] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(255))
    next_action_url: Mapped[str | None] = mapped_column(Text)
    return_url: Mapped[str | None] = mapped_column(Text)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    device_id: Mapped[str | None] = mapped_column(String(128))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    risk_decision: Mapped[str | None] = mapped_column(String(16))
    risk_reasons: Mapped[str | None] = mapped_column(Text)  # JSON list of rule names and details
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Rule 7: a lease while a gateway call is in flight; a sweep's per-record bookkeeping (0003).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("gateway", "gateway_payment_id"),
        # GET /payments and the velocity check: one user's payments, newest first.
        Index("ix_payments_user_created", "user_id", "created_at", "id"),
        # Every sweep (reconciliation of PENDING, expiry of PENDING_3DS): status = ? AND next_attempt_at <= now.
        Index("ix_payments_status_next", "status", "next_attempt_at"),
    )


class GatewayCustomerRow(Base):
    """One customer per user and gateway, created on first use."""

    __tablename__ = "gateway_customers"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(16))
    customer_ref: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("user_id", "gateway"),)


class PaymentMethodRow(Base):
    __tablename__ = "payment_methods"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    gateway: Mapped[str] = mapped_column(String(16))
    gateway_customer_ref: Mapped[str] = mapped_column(String(64))
    gateway_token: Mapped[str] = mapped_column(String(128))
    brand: Mapped[str] = mapped_column(String(32))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    country: Mapped[str | None] = mapped_column(String(2))
    iin: Mapped[str | None] = mapped_column(String(8))  # the BIN (first 6-8 digits): not card data under PCI DSS
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_payment_methods_user_deleted", "user_id", "deleted_at"),)


class RefundRow(Base):
    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"))
    user_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(255))
    gateway_refund_id: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    gateway_payment_id: Mapped[str | None] = mapped_column(String(64))  # a late success's own attempt (0003)
    # Rule 7: a lease while a gateway call is in flight; a sweep's per-record bookkeeping (0003).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("gateway_refund_id"),
        Index("ix_refunds_payment", "payment_id"),
        Index("ix_refunds_status_next", "status", "next_attempt_at"),
    )


class WithdrawalRequestRow(Base):
    __tablename__ = "withdrawal_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    mode: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    beneficiary_name: Mapped[str] = mapped_column(String(128))
    account_last4: Mapped[str | None] = mapped_column(String(4))  # never the full account number
    ifsc: Mapped[str | None] = mapped_column(String(11))
    vpa: Mapped[str | None] = mapped_column(String(255))
    contact_ref: Mapped[str | None] = mapped_column(String(64))
    fund_account_ref: Mapped[str | None] = mapped_column(String(64))
    gateway_payout_id: Mapped[str | None] = mapped_column(String(64))
    utr: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Rule 7: a lease while a gateway call is in flight; a sweep's per-record bookkeeping (0003).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("gateway_payout_id"),
        # The sweeps: REQUESTED retried, PROCESSING polled.
        Index("ix_withdrawal_requests_status_next", "status", "next_attempt_at"),
        Index("ix_withdrawal_requests_user_created", "user_id", "created_at"),
    )


class GatewayEventRow(Base):
    """The webhook inbox: stored raw before it is applied (dj-stripe), one row per gateway event."""

    __tablename__ = "gateway_events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    gateway: Mapped[str] = mapped_column(String(16))
    gateway_event_id: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(LongText)
    status: Mapped[str] = mapped_column(String(16))  # RECEIVED, APPLIED, IGNORED, RETRY, FAILED
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("gateway", "gateway_event_id"),
        # The applier's claim: status IN (RECEIVED, RETRY) AND next_attempt_at <= now ORDER BY id.
        Index("ix_gateway_events_status_next", "status", "next_attempt_at"),
    )


class OutboxEventRow(Base):
    """Events written in the same transaction as the state change; the relay publishes them in id order."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(64))  # the Kafka message key
    payload: Mapped[str] = mapped_column(Text)  # the CloudEvents JSON document, as published
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # --- relay (migration 0002): a row that can never be published (a card number in its payload,
    # a payload that is not JSON, too large for the broker) is set aside with the reason, never sent.
    quarantined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    # --- end relay

    __table_args__ = (
        UniqueConstraint("event_id"),
        # The relay's claim: published_at IS NULL (AND quarantined_at IS NULL, a handful at most)
        # ORDER BY id; and the purge of old published rows.
        Index("ix_outbox_events_published_id", "published_at", "id"),
    )


class IdempotencyKeyRow(Base):
    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    caller: Mapped[str] = mapped_column(String(100))  # "user:<sub>" or "client:<client id>"
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # IN_PROGRESS, COMPLETED
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(LongText)
    resource_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # How far the request got (rule 9): STARTED, RECORDED (the record exists), FINISHED.
    recovery_point: Mapped[str] = mapped_column(String(16), default="STARTED", server_default="STARTED")

    __table_args__ = (
        UniqueConstraint("caller", "key"),
        Index("ix_idempotency_keys_expires", "expires_at"),
    )


class ApiClientRow(Base):
    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(255))  # space-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("name"),)


class ApiKeyRow(Base):
    """Several active keys per client allow rotation. Only a SHA-256 of the key is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id"))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("key_hash"), Index("ix_api_keys_client", "client_id"))


# --- relay: leader lease (migration 0002) -----------------------------------------------------


class RelayLeaseRow(Base):
    """One row per elected role ("outbox"): who holds it and until when, by the database's clock.

    ``fencing`` goes up by one each time the lease changes hands, so a holder can tell whether
    someone else held it in between.
    """

    __tablename__ = "relay_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fencing: Mapped[int] = mapped_column(BigInteger, default=0)


# --- end relay ------------------------------------------------------------------------------
