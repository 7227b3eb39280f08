"""The unit of work and the repositories the services need, as abstractions (cosmicpython).

`with uow:` opens a transaction; leaving the block rolls back unless `uow.commit()` was called.
Gateway calls happen between units of work, never inside one (DESIGN.md rule 2).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from ..domain.events import Event
from ..domain.lifecycle import Move
from ..domain.payments import IdempotencyRecord, InboxEvent, Page, PageCursor, Payment, PaymentMethod, Refund
from ..domain.withdrawals import Withdrawal


class PaymentRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, payment: Payment) -> None: ...

    @abc.abstractmethod
    def get(self, payment_id: str, *, for_update: bool = False) -> Payment | None: ...

    @abc.abstractmethod
    def list_for_user(self, user_id: str | None, status: str | None, limit: int, cursor: PageCursor | None) -> Page: ...

    @abc.abstractmethod
    def velocity(self, user_id: str, since: datetime) -> tuple[int, int]:
        """(attempts, captured-or-pending amount) of the user's payments created since `since`."""

    @abc.abstractmethod
    def device_seen(self, user_id: str, device_id: str) -> bool:
        """Whether this user has captured a payment from this device before."""

    @abc.abstractmethod
    def find_by_gateway_id(self, gateway: str, gateway_payment_id: str) -> Payment | None: ...

    # --- refunds: the payment's refunded_amount, guarded in SQL ---
    @abc.abstractmethod
    def reserve_refund(self, payment_id: str, amount: int, at: datetime) -> bool:
        """Add `amount` to refunded_amount if, and only if, the payment is CAPTURED and the total stays
        within what it captured; True if reserved."""

    @abc.abstractmethod
    def release_refund(self, payment_id: str, amount: int, at: datetime) -> None:
        """Give back an amount reserved by a refund that failed."""

    # --- end refunds ---


class PaymentMethodRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, method: PaymentMethod) -> None: ...

    @abc.abstractmethod
    def get(self, method_id: str) -> PaymentMethod | None: ...

    @abc.abstractmethod
    def list_active(self, user_id: str) -> list[PaymentMethod]: ...

    @abc.abstractmethod
    def soft_delete(self, method_id: str, at: datetime) -> bool: ...


class CustomerRepository(abc.ABC):
    @abc.abstractmethod
    def get(self, user_id: str, gateway: str) -> str | None: ...

    @abc.abstractmethod
    def add(self, user_id: str, gateway: str, customer_ref: str, at: datetime) -> str:
        """Store the customer; if another request stored one first, return that one instead."""


class RefundRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, refund: Refund) -> None: ...

    @abc.abstractmethod
    def get(self, refund_id: str) -> Refund | None: ...

    @abc.abstractmethod
    def find_by_gateway_id(self, gateway_refund_id: str) -> Refund | None: ...

    @abc.abstractmethod
    def list_for_payment(self, payment_id: str) -> list[Refund]:
        """The payment's refunds, oldest first."""


class WithdrawalRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, withdrawal: Withdrawal) -> None: ...

    @abc.abstractmethod
    def get(self, withdrawal_id: str, *, for_update: bool = False) -> Withdrawal | None: ...

    @abc.abstractmethod
    def find_by_gateway_id(self, gateway_payout_id: str) -> Withdrawal | None: ...



class RecordRepository(abc.ABC):
    """The one primitive every money path changes a payment, refund or withdrawal through.

    `kind` is a lifecycle kind (domain/lifecycle.py: payment, refund, withdrawal). Status changes go
    only through `move`; ownership of a record whose gateway call is in flight through `claim` /
    `claim_due` / `release` (DESIGN.md rule 7).
    """

    @abc.abstractmethod
    def get(self, kind: str, record_id: str, *, for_update: bool = False) -> Any | None: ...

    @abc.abstractmethod
    def move(self, move: Move[Any]) -> bool:
        """UPDATE ... SET status = target WHERE id = :id AND status IN (allowed); if, and only if, the
        row moved, write the move's event to the outbox in the same transaction. True if it moved."""

    @abc.abstractmethod
    def update(self, kind: str, record_id: str, **changes: Any) -> None:
        """Change fields that are not the status (a gateway reference, when to look again)."""

    @abc.abstractmethod
    def claim(self, kind: str, record_id: str, statuses: Collection[str], now: datetime, until: datetime) -> bool:
        """Take the record for a gateway call if it is in one of `statuses` and nobody holds it (no
        claim, or one that expired); True if taken."""

    @abc.abstractmethod
    def claim_due(
        self, kind: str, statuses: Collection[str], now: datetime, until: datetime, limit: int
    ) -> list[Any]:
        """A sweep's batch: up to `limit` records in `statuses` whose next attempt is due and that
        nobody holds, earliest due first, claimed until `until` (`SKIP LOCKED`: replicas never
        share a record)."""

    @abc.abstractmethod
    def release(
        self, kind: str, record_id: str, *, next_attempt_at: datetime, error: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Give a claimed record back: when to look at it again, and why (None: no error, only not
        finished yet)."""


class KeyTaken(Exception):
    """The idempotency key this unit of work inserted exists already (another request holds or held it).

    Raised by whichever statement sends the INSERT: the insert itself, or, where it waits to ride
    with the next statement (MySQL, adapters/deferred_writes.py), that statement or the commit. The
    unit of work is spoilt: it is only fit to be rolled back.
    """


class IdempotencyRepository(abc.ABC):
    """Keys are addressed by (caller, key), unique: an insert that waits for the next statement has no
    id yet."""

    @abc.abstractmethod
    def insert(self, record: IdempotencyRecord) -> bool:
        """Insert a new IN_PROGRESS record; False if (caller, key) is known to exist already. Where the
        INSERT is sent with the next statement, a duplicate raises KeyTaken from there instead."""

    @abc.abstractmethod
    def confirm(self) -> None:
        """Send an inserted key that still waits, now: raises KeyTaken if it exists. (A request refused
        before any statement learns whether its key was a retry's.)"""

    @abc.abstractmethod
    def get(self, caller: str, key: str) -> IdempotencyRecord | None: ...

    @abc.abstractmethod
    def take_over(self, caller: str, key: str, now: datetime, locked_until: datetime) -> bool:
        """Lock a record whose previous holder is gone (lock expired or released); True if we got it."""

    @abc.abstractmethod
    def complete(self, caller: str, key: str, status: int, body: str, resource_id: str | None) -> None: ...

    @abc.abstractmethod
    def release(self, caller: str, key: str) -> None:
        """Unlock without a stored response, so a retry with the same key runs again."""

    @abc.abstractmethod
    def delete(self, caller: str, key: str) -> None: ...


class GatewayEventRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, event: InboxEvent) -> bool:
        """Store a verified webhook; False if (gateway, gateway_event_id) is stored already."""

    @abc.abstractmethod
    def claim_due(self, now: datetime, lease_until: datetime, fresh: int, retries: int) -> list[InboxEvent]:
        """An applier's batch, claimed in one statement (`SKIP LOCKED`: appliers never share an event):
        up to `fresh` events never tried, oldest first, then up to `retries` due retries and as many
        events whose applier died (lease lapsed), earliest due first. Each is PROCESSING until
        `lease_until`, with `attempts` + 1 (the claim's token)."""

    @abc.abstractmethod
    def settle(self, event_id: int, attempts: int, status: str, now: datetime, error: str | None = None) -> bool:
        """The event's final status (APPLIED, IGNORED, NOT_OURS, FAILED), if the claim numbered
        `attempts` still holds it; False if it lapsed and another applier took the event."""

    @abc.abstractmethod
    def settle_many(self, events: list[InboxEvent], status: str, now: datetime) -> int:
        """The same final status for a batch's events this applier still holds (by their claim's lease);
        returns how many."""

    @abc.abstractmethod
    def retry_later(self, event_id: int, attempts: int, next_attempt_at: datetime, error: str) -> bool:
        """Back to the retry lane, due at `next_attempt_at`, if the claim numbered `attempts` still holds it."""

    @abc.abstractmethod
    def give_back(self, events: list[InboxEvent], now: datetime) -> None:
        """Events claimed and not started (the applier is stopping): due at once, the claim not counted."""


class OutboxRepository(abc.ABC):
    @abc.abstractmethod
    def add(self, event: Event) -> None:
        """Write the event in the current transaction; it is published after commit by the relay."""


class AbstractUnitOfWork(abc.ABC):
    payments: PaymentRepository
    payment_methods: PaymentMethodRepository
    customers: CustomerRepository
    refunds: RefundRepository
    idempotency: IdempotencyRepository
    outbox: OutboxRepository
    gateway_events: GatewayEventRepository
    withdrawals: WithdrawalRepository
    records: RecordRepository

    def __enter__(self) -> AbstractUnitOfWork:
        return self

    def __exit__(self, *args: object) -> None:
        self.rollback()

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...


# What every use case takes: a way to open a unit of work, and the time (a fake one in tests).
UowFactory = Callable[[], AbstractUnitOfWork]
Clock = Callable[[], datetime]
