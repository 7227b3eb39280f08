"""SQLAlchemy 2 tables. Schema changes go through Alembic (migrations/); a test keeps the two in step.

Times are stored as naive UTC DATETIME(6) (MySQL has no zone-aware type) and come back aware.
Money is BIGINT minor units. Long JSON documents are TEXT (MEDIUMTEXT on MySQL).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
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


class FxRate(TypeDecorator[Decimal]):
    """An exchange rate: DECIMAL(38, 20) on MySQL; its exact decimal text on SQLite (no native decimal)."""

    impl = String(40)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DECIMAL(precision=38, scale=20))
        return dialect.type_descriptor(String(40))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None or dialect.name in ("mysql", "mariadb"):
            return value
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value))


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
    # Issue 13 (0006): the amount in CANONICAL_CURRENCY, the rate used and the rate's time (domain/fx.py).
    canonical_amount: Mapped[int | None] = mapped_column(BigInteger)
    canonical_currency: Mapped[str | None] = mapped_column(String(3))
    fx_rate: Mapped[Decimal | None] = mapped_column(FxRate)
    fx_rate_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("gateway", "gateway_payment_id"),
        # GET /payments and the velocity check: one user's payments, newest first.
        Index("ix_payments_user_created", "user_id", "created_at", "id"),
        # Every sweep (reconciliation of PENDING, expiry of PENDING_3DS): status = ? AND next_attempt_at <= now.
        Index("ix_payments_status_next", "status", "next_attempt_at"),
        # Settlement reconciliation (0005): one gateway's payments of a day.
        Index("ix_payments_gateway_created", "gateway", "created_at"),
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
    # Issue 13 (0006): the amount in CANONICAL_CURRENCY, the rate used and the rate's time (domain/fx.py).
    canonical_amount: Mapped[int | None] = mapped_column(BigInteger)
    canonical_currency: Mapped[str | None] = mapped_column(String(3))
    fx_rate: Mapped[Decimal | None] = mapped_column(FxRate)
    fx_rate_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("gateway_refund_id"),
        Index("ix_refunds_payment", "payment_id"),
        Index("ix_refunds_status_next", "status", "next_attempt_at"),
        Index("ix_refunds_created", "created_at"),  # settlement reconciliation (0005): a day's refunds
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
    # Issue 13 (0006): the amount in CANONICAL_CURRENCY, the rate used and the rate's time (domain/fx.py).
    canonical_amount: Mapped[int | None] = mapped_column(BigInteger)
    canonical_currency: Mapped[str | None] = mapped_column(String(3))
    fx_rate: Mapped[Decimal | None] = mapped_column(FxRate)
    fx_rate_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

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
    # Signed requests (0004): mutations must carry X-Signature (docs/auth.md).
    require_signing: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

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


# --- audit trail and signed requests (migration 0004) -------------------------------------


class AuditEventRow(Base):
    """Append-only: inserted in the transaction of what it records; `seq`, `prev_hash` and `hash` are
    filled once by the sealer (adapters/audit_store.py), never changed after."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))  # user:<sub>, client:<id>, gateway:<name>, job:<name>, cli:<who>
    actor_key_prefix: Mapped[str | None] = mapped_column(String(16))  # the API key's display prefix
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str | None] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    source: Mapped[str | None] = mapped_column(String(45))
    summary: Mapped[str] = mapped_column(String(255))
    seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # The sealer's scan (seq IS NULL ORDER BY id) and verify's walk (ORDER BY seq).
        UniqueConstraint("seq"),
        # GET /audit-events filters, newest first.
        Index("ix_audit_events_resource", "resource_id", "id"),
        Index("ix_audit_events_actor", "actor", "id"),
        Index("ix_audit_events_occurred", "occurred_at", "id"),
    )


class AuditChainRow(Base):
    """The chain's head (last sealed seq and hash) and anchor (where it starts after a purge); one row,
    id 1, with an HMAC over both so it cannot be rewritten without AUDIT_HMAC_KEY."""

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    anchor_seq: Mapped[int] = mapped_column(BigInteger)
    anchor_hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))


class ApiSigningSecretRow(Base):
    """A client's request-signing secrets: only a random salt is kept; the secret is derived from it
    and CLIENT_SIGNING_MASTER_KEY (services/api_keys.py), so the table alone reveals none."""

    __tablename__ = "api_signing_secrets"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id"))
    prefix: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_api_signing_secrets_client", "client_id"),)


class RequestSignatureRow(Base):
    """Signatures seen within their tolerance window: a second use is a replay (shared by every API process)."""

    __tablename__ = "request_signatures"

    signature_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(40))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_request_signatures_expires", "expires_at"),)


# --- end audit trail and signed requests --------------------------------------------------


# --- settlement reconciliation (migration 0005) -----------------------------------------------


class ReconcileRunRow(Base):
    """One run of the daily settlement reconciliation (`payment-service reconcile-day`, the nightly job)."""

    __tablename__ = "reconcile_runs"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    gateway: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))  # cli, nightly
    claim_key: Mapped[str | None] = mapped_column(String(64))  # nightly:<day>:<gateway>; one worker runs it
    status: Mapped[str] = mapped_column(String(16))  # RUNNING, CLEAN, DIFFERENCES, FAILED
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gateway_charges: Mapped[int | None] = mapped_column(Integer)
    gateway_refunds: Mapped[int | None] = mapped_column(Integer)
    our_payments: Mapped[int | None] = mapped_column(Integer)
    our_refunds: Mapped[int | None] = mapped_column(Integer)
    differences: Mapped[int | None] = mapped_column(Integer)
    report_location: Mapped[str | None] = mapped_column(String(512))
    report: Mapped[str | None] = mapped_column(LongText)  # JSON: counts by kind, the first 1,000 differences
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("claim_key"),
        Index("ix_reconcile_runs_gateway_day", "gateway", "day"),
    )


# --- end settlement reconciliation ------------------------------------------------------------
