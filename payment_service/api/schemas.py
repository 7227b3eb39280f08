"""Request and response bodies as pydantic models: they validate input and feed /openapi.json."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from ..domain.money import MAX_AMOUNT, SUPPORTED_CURRENCIES

Gateway = Literal["stripe", "razorpay"]


class Strict(BaseModel):
    # Unknown fields are refused, as Stripe does: a typo must not silently change a payment.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Device(Strict):
    id: str = Field(min_length=1, max_length=128, description="the wallet app's device id")
    ip: str | None = Field(default=None, max_length=45, description="the customer's IP address")

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v


class TopUpRequest(Strict):
    amount: StrictInt = Field(gt=0, le=MAX_AMOUNT, description="minor units (paise, cents)")
    currency: str = Field(description="ISO 4217, upper case", examples=["INR"])
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


class Card(BaseModel):
    brand: str | None
    last4: str | None


class NextAction(BaseModel):
    type: Literal["redirect_to_url"]
    url: str


class PaymentOut(BaseModel):
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
    created_at: str
    updated_at: str
    captured_at: str | None
    expires_at: str | None


class PaymentList(BaseModel):
    data: list[PaymentOut]
    has_more: bool
    next_cursor: str | None


class PaymentMethodRequest(Strict):
    gateway: Gateway
    token: str = Field(min_length=1, max_length=255)


class PaymentMethodOut(BaseModel):
    id: str
    gateway: str
    brand: str
    last4: str
    exp_month: int | None
    exp_year: int | None
    created_at: str


class PaymentMethodList(BaseModel):
    data: list[PaymentMethodOut]


# --- refunds and withdrawals ----------------------------------------------------------------


class RefundRequest(Strict):
    amount: StrictInt | None = Field(
        default=None, gt=0, le=MAX_AMOUNT, description="minor units; default: all that is left to refund"
    )
    reason: str | None = Field(default=None, min_length=1, max_length=255)


class RefundOut(BaseModel):
    id: str
    payment_id: str
    amount: int
    currency: str
    status: Literal["PENDING", "SUCCEEDED", "FAILED"]
    reason: str | None
    failure_reason: str | None
    gateway_refund_id: str | None
    created_at: str
    updated_at: str


class RefundList(BaseModel):
    data: list[RefundOut]


class WithdrawalBeneficiary(Strict):
    """A bank account (NEFT, IMPS: name, account_number, ifsc) or a UPI address (UPI: name, vpa).

    The rules (patterns below, mode consistency) are checked with one message per field."""

    name: str = Field(max_length=200, description="3 to 100 characters")
    # Only the last four digits are ever stored or shown; repr=False keeps it out of any repr().
    account_number: str | None = Field(
        default=None, max_length=64, repr=False, json_schema_extra={"pattern": r"^[0-9]{9,18}$"}
    )
    ifsc: str | None = Field(default=None, max_length=32, json_schema_extra={"pattern": r"^[A-Z]{4}0[A-Z0-9]{6}$"})
    vpa: str | None = Field(
        default=None, max_length=330, json_schema_extra={"pattern": r"^[a-zA-Z0-9.\-_]{2,256}@[a-zA-Z]{2,64}$"}
    )


class WithdrawalRequest(Strict):
    user_id: str = Field(min_length=1, max_length=64)
    amount: StrictInt = Field(
        gt=0, le=MAX_AMOUNT,
        description="paise; at least 100; UPI at most 10000000 (Rs 1 lakh), IMPS at most 50000000 (Rs 5 lakh)",
    )
    currency: Literal["INR"]
    mode: Literal["NEFT", "IMPS", "UPI"]
    beneficiary: WithdrawalBeneficiary


class WithdrawalBeneficiaryOut(BaseModel):
    name: str
    account_last4: str | None = Field(default=None, description="NEFT and IMPS")
    vpa: str | None = Field(default=None, description="UPI")


class WithdrawalOut(BaseModel):
    id: str
    user_id: str
    amount: int
    currency: str
    mode: Literal["NEFT", "IMPS", "UPI"]
    status: Literal["REQUESTED", "PROCESSING", "SETTLED", "FAILED", "REVERSED"]
    utr: str | None
    beneficiary: WithdrawalBeneficiaryOut
    failure_reason: str | None
    created_at: str
    updated_at: str


# --- end refunds and withdrawals ------------------------------------------------------------
