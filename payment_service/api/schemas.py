"""Request and response bodies as pydantic models: they validate input, shape every JSON response
(`body()`), and feed /openapi.json, so the document is what the API returns."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, field_validator, model_validator

from ..domain.money import MAX_AMOUNT, SUPPORTED_CURRENCIES

Gateway = Literal["stripe", "razorpay"]


class Strict(BaseModel):
    # Unknown fields are refused, as Stripe does: a typo must not silently change a payment.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Out(BaseModel):
    """A response body. Every field is always present (null where it has no value), and nothing else
    is: the document says `required` and `additionalProperties: false`, and `body()` refuses a field
    the model does not declare, so the API cannot return what the document does not describe."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


OutT = TypeVar("OutT", bound=Out)


def body(model: type[Out], data: Any) -> dict[str, Any]:
    """The JSON body of a response: `data` validated by the model that documents it, dumped as JSON."""
    return model.model_validate(data).model_dump(mode="json")


Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, description="RFC 3339, UTC")]
OptionalTimestamp = Annotated[str | None, Field(json_schema_extra={"format": "date-time"}, description="RFC 3339, UTC")]
# Issue 13: the amount in CANONICAL_CURRENCY at the rate in force when the record was created.
CanonicalAmount = Annotated[int | None, Field(
    description="the amount in `canonical_currency`, minor units, at the reference rate in force when the record "
                "was created (half-even); null when no fresh rate was available")]
CanonicalCurrency = Annotated[str | None, Field(
    description="the service's CANONICAL_CURRENCY (ISO 4217), or null with canonical_amount",
    json_schema_extra={"pattern": "^[A-Z]{3}$"}, examples=["USD"])]
AmountDisplay = Annotated[str, Field(
    description="`amount` for people, in the service's DISPLAY_LOCALE, with the currency's symbol and exponent",
    examples=["₹1,234.50"])]


class Device(Strict):
    id: str = Field(min_length=1, max_length=128, description="the wallet app's device id")
    ip: str | None = Field(default=None, max_length=45, description="the customer's IP address")

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v


# What the validators below enforce, said in the document too: exactly one source of money, a token
# with its gateway, a saved method without one being needed.
_TOP_UP_SOURCES: list[JsonValue] = [
    {"title": "a new card token", "required": ["token", "gateway"],
     "properties": {"token": {"type": "string"}, "gateway": {"type": "string"}, "payment_method_id": {"type": "null"}}},
    {"title": "a saved payment method", "required": ["payment_method_id"],
     "properties": {"payment_method_id": {"type": "string"}, "token": {"type": "null"}}},
]


class TopUpRequest(Strict):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"oneOf": _TOP_UP_SOURCES})

    amount: StrictInt = Field(gt=0, le=MAX_AMOUNT, description="minor units (paise, cents)")
    currency: str = Field(description="ISO 4217, upper case", examples=["INR"],
                          json_schema_extra={"enum": list[JsonValue](sorted(SUPPORTED_CURRENCIES))})
    gateway: Gateway | None = Field(default=None, description="required with `token`")
    token: str | None = Field(default=None, min_length=1, max_length=255, description="a gateway token")
    payment_method_id: str | None = Field(default=None, min_length=1, max_length=40, description="a saved method")
    return_url: str | None = Field(default=None, max_length=2048, description="where 3-D Secure returns to")
    device: Device | None = None

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if v not in SUPPORTED_CURRENCIES:
            raise ValueError(f"must be one of {', '.join(sorted(SUPPORTED_CURRENCIES))}")
        return v

    @field_validator("return_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in {"https", "http"} or not parts.netloc:
                raise ValueError("must be an absolute http(s) URL")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> TopUpRequest:
        if (self.token is None) == (self.payment_method_id is None):
            raise ValueError("give exactly one of token or payment_method_id")
        if self.token is not None and self.gateway is None:
            raise ValueError("gateway is required with token")
        return self


class Card(Out):
    brand: str | None
    last4: str | None


class NextAction(Out):
    type: Literal["redirect_to_url"]
    url: str


class PaymentOut(Out):
    id: str
    user_id: str
    amount: int
    currency: str
    gateway: str
    gateway_payment_id: str | None
    payment_method_id: str | None
    card: Card | None
    status: Literal["PENDING", "PENDING_3DS", "CAPTURED", "FAILED", "EXPIRED"]
    failure_code: str | None
    failure_message: str | None
    next_action: NextAction | None
    refunded_amount: int
    created_at: Timestamp
    updated_at: Timestamp
    captured_at: OptionalTimestamp
    expires_at: OptionalTimestamp
    canonical_amount: CanonicalAmount
    canonical_currency: CanonicalCurrency
    amount_display: AmountDisplay


class PaymentList(Out):
    data: list[PaymentOut]
    has_more: bool
    next_cursor: str | None


class PaymentMethodRequest(Strict):
    gateway: Gateway
    token: str = Field(min_length=1, max_length=255)


class PaymentMethodOut(Out):
    id: str
    gateway: str
    brand: str
    last4: str
    exp_month: int | None
    exp_year: int | None
    created_at: Timestamp


class PaymentMethodList(Out):
    data: list[PaymentMethodOut]


# --- refunds and withdrawals ----------------------------------------------------------------


class RefundRequest(Strict):
    amount: StrictInt | None = Field(
        default=None, gt=0, le=MAX_AMOUNT, description="minor units; default: all that is left to refund"
    )
    reason: str | None = Field(default=None, min_length=1, max_length=255)


class RefundOut(Out):
    id: str
    payment_id: str
    amount: int
    currency: str
    status: Literal["PENDING", "SUCCEEDED", "FAILED"]
    reason: str | None
    failure_reason: str | None
    gateway_refund_id: str | None
    created_at: Timestamp
    updated_at: Timestamp
    canonical_amount: CanonicalAmount
    canonical_currency: CanonicalCurrency
    amount_display: AmountDisplay


class RefundList(Out):
    data: list[RefundOut]


class WithdrawalBeneficiary(Strict):
    """A bank account (NEFT, IMPS: name, account_number, ifsc) or a UPI address (UPI: name, vpa).

    The rules (patterns below, mode consistency) are checked with one message per field."""

    name: str = Field(max_length=200, description="3 to 100 characters",
                      json_schema_extra={"minLength": 3, "maxLength": 100, "pattern": r"^\S(.*\S)?$"})
    # Only the last four digits are ever stored or shown; repr=False keeps it out of any repr().
    account_number: str | None = Field(
        default=None, max_length=64, repr=False, json_schema_extra={"pattern": r"^[0-9]{9,18}$"}
    )
    ifsc: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": r"^[A-Z]{4}0[A-Z0-9]{6}$"})
    vpa: str | None = Field(
        default=None, max_length=330, json_schema_extra={"pattern": r"^[a-zA-Z0-9.\-_]{2,256}@[a-zA-Z]{2,64}$"}
    )


def _payout_mode(mode: str, max_amount: int, needs: list[str], refuses: list[str]) -> JsonValue:
    return {
        "title": mode,
        "properties": {
            "mode": {"const": mode},
            "amount": {"maximum": max_amount},
            "beneficiary": {"required": ["name", *needs],
                            "properties": {**{f: {"type": "string"} for f in needs},
                                           **{f: {"type": "null"} for f in refuses}}},
        },
    }


# The rules of domain/withdrawals.withdrawal_errors, per mode, so the document says what is refused.
_PAYOUT_MODES: list[JsonValue] = [
    _payout_mode("UPI", 10_000_000, ["vpa"], ["account_number", "ifsc"]),
    _payout_mode("IMPS", 50_000_000, ["account_number", "ifsc"], ["vpa"]),
    _payout_mode("NEFT", MAX_AMOUNT, ["account_number", "ifsc"], ["vpa"]),
]


class WithdrawalRequest(Strict):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, json_schema_extra={"oneOf": _PAYOUT_MODES})

    user_id: str = Field(min_length=1, max_length=64)
    amount: StrictInt = Field(
        gt=0, le=MAX_AMOUNT,
        description="paise; at least 100; UPI at most 10000000 (Rs 1 lakh), IMPS at most 50000000 (Rs 5 lakh)",
        json_schema_extra={"minimum": 100},
    )
    currency: Literal["INR"]
    mode: Literal["NEFT", "IMPS", "UPI"]
    beneficiary: WithdrawalBeneficiary


class BankAccountOut(Out):
    """NEFT and IMPS: the account holder and the account number's last four digits, never more."""

    name: str
    account_last4: str | None


class UpiAddressOut(Out):
    """UPI: the account holder and the UPI address."""

    name: str
    vpa: str


class WithdrawalOut(Out):
    id: str
    user_id: str
    amount: int
    currency: str
    mode: Literal["NEFT", "IMPS", "UPI"]
    status: Literal["REQUESTED", "PROCESSING", "SETTLED", "FAILED", "REVERSED"]
    utr: str | None
    beneficiary: BankAccountOut | UpiAddressOut
    failure_reason: str | None
    created_at: Timestamp
    updated_at: Timestamp
    canonical_amount: CanonicalAmount
    canonical_currency: CanonicalCurrency
    amount_display: AmountDisplay


# --- end refunds and withdrawals ------------------------------------------------------------


class Health(Out):
    status: Literal["ok"]


class Readiness(Out):
    status: Literal["ready"]
    checks: dict[str, str] = Field(description="each part checked (database): `ok`")


class WebhookReceived(Out):
    """The answer to a gateway's webhook: stored (applied later), or a duplicate of a stored event."""

    received: Literal[True]
    duplicate: bool = Field(description="the event was stored before: it is applied zero more times")


# --- audit trail (issue 12) ---


class AuditEventOut(Out):
    id: str = Field(description="aud_<number>: the row's place in insertion order")
    time: Timestamp
    actor: str = Field(description="user:<id>, client:<id>, gateway:<name>, job:<name>, cli:<operator>, "
                       "anonymous:- or system:service")
    actor_key_prefix: str | None = Field(description="a service client's API key display prefix")
    action: str = Field(examples=["POST /payments/<payment_id>/refunds", "payment.captured", "client.key.rotate"])
    resource_type: str | None = Field(examples=["payment", "refund", "withdrawal", "payment_method", "api_client"])
    resource_id: str | None
    outcome: Literal["succeeded", "rejected", "failed"]
    http_status: int | None = Field(description="for an API call: the status answered")
    request_id: str | None = Field(description="the API request's X-Request-Id, or the webhook's event id")
    source: str | None = Field(description="the caller's network address")
    summary: str
    seq: int | None = Field(description="place in the HMAC chain; null until sealed (within seconds)")
    hash: str | None = Field(description="the row's chain hash (hex HMAC-SHA256)")


class AuditEventList(Out):
    data: list[AuditEventOut]
    has_more: bool
    next_cursor: str | None
