"""RazorpayX payouts: create (once per `X-Payout-Idempotency` key), settle or fail them, fetch, list, cancel."""

from __future__ import annotations

import secrets
import string
import threading
from typing import Any

from flask import Response, request

from ..core import Sandbox, current_sandbox
from ._auth import _idempotent
from ._blueprint import bp
from ._common import (
    _ALNUM,
    RazorpayError,
    _amount,
    _body,
    _collection,
    _get,
    _json,
    _notes,
    _now,
    _public,
    _required,
    _rid,
)
from .events import emit_event

SETTINGS_ID = "_razorpay_settings"
PAYOUT_MODES = {"NEFT", "IMPS", "UPI", "RTGS"}
PAYOUT_KEY_HEADER = "X-Payout-Idempotency"


def _settings(sb: Sandbox) -> dict[str, Any]:
    with sb.store.lock:
        settings = sb.store.get(SETTINGS_ID)
        if settings is None:
            settings = sb.store.put(
                {
                    "id": SETTINGS_ID,
                    "auto_settle_payouts": False,
                    "auto_settle_delay_ms": 0,
                    "auto_settle_result": "processed",
                    "initial_payout_status": "processing",
                }
            )
        return settings


def _payout_fields(body: dict[str, Any]) -> dict[str, Any]:
    account_number = str(_required(body, "account_number"))
    if not account_number.isdigit() or not 8 <= len(account_number) <= 20:
        raise RazorpayError("The account number is invalid.", field="account_number")
    currency = str(_required(body, "currency"))
    if currency != "INR":
        raise RazorpayError("The currency must be INR.", field="currency")
    mode = str(_required(body, "mode")).upper()
    if mode not in PAYOUT_MODES:
        raise RazorpayError("The selected mode is invalid.", field="mode")
    reference_id = body.get("reference_id")
    if reference_id is not None and len(str(reference_id)) > 40:
        raise RazorpayError("The reference id may not be greater than 40 characters.", field="reference_id")
    return {
        "account_number": account_number,
        "fund_account_id": str(_required(body, "fund_account_id")),
        "amount": _amount(_required(body, "amount"), currency),
        "currency": currency,
        "mode": mode,
        "purpose": str(_required(body, "purpose")),
        "reference_id": reference_id,
        "narration": body.get("narration"),
        "notes": _notes(body.get("notes")),
    }


@bp.post("/v1/payouts")
def create_payout() -> Response:
    sb = current_sandbox()
    key = request.headers.get(PAYOUT_KEY_HEADER)
    if not key:
        raise RazorpayError(
            "Idempotency key is missing. Include idempotency header and key in the request.",
            field=PAYOUT_KEY_HEADER,
            reason="null",
            step="null",
        )
    if not 4 <= len(key) <= 36 or any(c not in _ALNUM + "-_ " for c in key):
        raise RazorpayError(
            "The idempotency key must be 4 to 36 characters: letters, numbers, hyphens, underscores and spaces.",
            field=PAYOUT_KEY_HEADER,
        )
    body = _body()
    return _idempotent(
        sb,
        "payout",
        key,
        "/v1/payouts",
        body,
        lambda: _create_payout(sb, body),
        header=PAYOUT_KEY_HEADER,
        other_body="Different request body sent for the same idempotency key. Use a new idempotency key.",
    )


def _create_payout(sb: Sandbox, body: dict[str, Any]) -> Response:
    fields = _payout_fields(body)
    with sb.store.lock:
        fund_account = _get(sb, fields["fund_account_id"], "fund_account")
        if not fund_account["active"]:
            raise RazorpayError("The fund account is not active", field="fund_account_id")
        kind = fund_account["account_type"]
        if (kind == "vpa") != (fields["mode"] == "UPI"):
            raise RazorpayError(
                f"Invalid combination of payout mode ({fields['mode']}) and beneficiary account type ({kind})",
                field="mode",
            )
        settings = _settings(sb)
        payout = sb.store.put(
            {
                "id": _rid("pout"),
                "entity": "payout",
                "fund_account_id": fields["fund_account_id"],
                "amount": fields["amount"],
                "currency": fields["currency"],
                "notes": fields["notes"],
                "fees": 0,
                "tax": 0,
                "status": settings["initial_payout_status"],
                "utr": None,
                "mode": fields["mode"],
                "purpose": fields["purpose"],
                "reference_id": fields["reference_id"],
                "narration": fields["narration"],
                "batch_id": None,
                "failure_reason": None,
                "status_details": None,
                "created_at": _now(),
                "_account_number": fields["account_number"],
            }
        )
        first_event = {"processing": "payout.initiated", "queued": "payout.queued", "pending": "payout.pending"}
        emit_event(sb, first_event[payout["status"]], {"payout": payout})
        if settings["auto_settle_payouts"]:
            timer = threading.Timer(
                settings["auto_settle_delay_ms"] / 1000.0,
                _auto_settle,
                args=(sb, payout["id"], settings["auto_settle_result"]),
            )
            timer.daemon = True
            timer.start()
        return _json(_public(payout), 200)


def _auto_settle(sb: Sandbox, payout_id: str, result: str) -> None:
    try:
        transition_payout(sb, payout_id, result)
    except RazorpayError:
        pass  # already moved on demand meanwhile


def transition_payout(
    sb: Sandbox, payout_id: str, to: str, *, utr: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """queued/pending/processing -> processed (with utr) | failed | cancelled; processed -> reversed."""
    allowed = {
        "processed": {"queued", "pending", "processing"},
        "failed": {"queued", "pending", "processing"},
        "cancelled": {"queued", "pending"},
        "reversed": {"processed"},
    }
    with sb.store.lock:
        payout = _get(sb, payout_id, "payout")
        if payout["status"] not in allowed[to]:
            raise RazorpayError(f"Payout in status {payout['status']} cannot be moved to {to}", field="status")
        payout["status"] = to
        if to == "processed":
            digits = "".join(secrets.choice(string.digits) for _ in range(12))
            payout["utr"] = utr or (digits if payout["mode"] != "NEFT" else f"SBIN{digits}")
            payout["status_details"] = {
                "description": "Payout is processed and the money has been credited into the beneficiary account.",
                "source": "beneficiary_bank",
                "reason": "payout_processed",
            }
        elif to == "failed":
            description = reason or "Payout failed. The beneficiary bank rejected the transfer."
            payout["failure_reason"] = description
            payout["status_details"] = {
                "description": description,
                "source": "beneficiary_bank",
                "reason": "bank_rejected",
            }
        elif to == "reversed":
            description = reason or "Payout was reversed by the beneficiary bank."
            payout["failure_reason"] = description
            payout["status_details"] = {
                "description": description,
                "source": "beneficiary_bank",
                "reason": "payout_reversed",
            }
        else:
            payout["status_details"] = {
                "description": "Payout cancelled by the business.",
                "source": "business",
                "reason": "cancelled",
            }
        event = {"processed": "payout.processed", "failed": "payout.failed", "reversed": "payout.reversed"}.get(to)
        if event:
            emit_event(sb, event, {"payout": payout})
        return payout


@bp.get("/v1/payouts/<payout_id>")
def fetch_payout(payout_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), payout_id, "payout")))


@bp.get("/v1/payouts")
def list_payouts() -> Response:
    sb = current_sandbox()
    account_number = request.args.get("account_number")
    if not account_number:
        raise RazorpayError("The account number field is required.", field="account_number")
    reference_id = request.args.get("reference_id")
    payouts = sb.store.find(
        lambda o: (
            o.get("entity") == "payout"
            and o["_account_number"] == account_number
            and (reference_id is None or o.get("reference_id") == reference_id)
        )
    )
    payouts.sort(key=lambda o: o["created_at"], reverse=True)
    return _json(_collection(payouts))


@bp.post("/v1/payouts/<payout_id>/cancel")
def cancel_payout(payout_id: str) -> Response:
    return _json(_public(transition_payout(current_sandbox(), payout_id, "cancelled")))
