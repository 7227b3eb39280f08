"""Domain errors: small classes with a stable `code`; api/ maps each class to an HTTP status."""

from __future__ import annotations

import math


class DomainError(Exception):
    code = "error"
    title = "Error"

    def __init__(self, detail: str = "", *, field: str | None = None, errors: list[dict[str, str]] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = list(errors or [])
        if field is not None:
            self.errors.append({"field": field, "message": self.detail})


class ValidationFailed(DomainError):
    code = "validation_failed"
    title = "Invalid request"


class CardDataNotAccepted(DomainError):
    code = "card_data_not_accepted"
    title = "Card data not accepted"


class NotFound(DomainError):
    code = "not_found"
    title = "Not found"


class Unauthorized(DomainError):
    """No credential, or one that is missing, malformed, expired or unknown (401)."""

    code = "unauthorized"
    title = "Authentication required"


class Forbidden(DomainError):
    """A valid caller of the wrong kind for this endpoint, e.g. a service client on a user-only route (403)."""

    code = "forbidden"
    title = "Forbidden"


class InsufficientScope(Forbidden):
    """A service client without the scope the endpoint needs, or a user on a service-only route (403)."""

    code = "insufficient_scope"
    title = "Insufficient scope"


class Conflict(DomainError):
    code = "conflict"
    title = "Conflict"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    title = "Idempotency key reused with a different request"


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    title = "A request with this idempotency key is still in progress"


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "Invalid state transition"


class RefundExceedsCaptured(DomainError):
    code = "refund_exceeds_captured"
    title = "Refund exceeds the captured amount"


class PaymentNotRefundable(DomainError):
    code = "payment_not_refundable"
    title = "Only captured payments can be refunded"


class GatewayUnavailable(DomainError):
    """The gateway (or another dependency) could not be reached; the caller may retry later."""

    code = "gateway_unavailable"
    title = "Payment gateway unavailable"
    DEFAULT_RETRY_AFTER = 2  # seconds, when nothing better is known

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        # When to come back, in whole seconds (at least 1): the breaker's remaining open time if it is open.
        self.retry_after = max(1, math.ceil(retry_after if retry_after is not None else self.DEFAULT_RETRY_AFTER))


class DependencyUnavailable(DomainError):
    code = "service_unavailable"
    title = "A dependency is unavailable"
