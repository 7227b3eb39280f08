"""Events others must hear about, in the CloudEvents 1.0 form of CONTRACT.md."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import ids

SOURCE = "payment-service"


class EventType(str, enum.Enum):
    PAYMENT_CAPTURED = "PAYMENT_CAPTURED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    PAYMENT_EXPIRED = "PAYMENT_EXPIRED"
    PAYMENT_REFUNDED = "PAYMENT_REFUNDED"
    WITHDRAWAL_SETTLED = "WITHDRAWAL_SETTLED"
    WITHDRAWAL_FAILED = "WITHDRAWAL_FAILED"
    WITHDRAWAL_REVERSED = "WITHDRAWAL_REVERSED"


def rfc3339(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    type: EventType
    subject: str  # the id of the object the event is about (pay_..., wd_...)
    user_id: str  # the Kafka message key: keeps one user's events in order
    data: dict[str, Any]
    id: str = field(default_factory=lambda: ids.new_id(ids.EVENT))
    time: datetime = field(default_factory=utcnow)

    def to_cloudevent(self) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": SOURCE,
            "type": self.type.value,
            "time": rfc3339(self.time),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "data": self.data,
        }
