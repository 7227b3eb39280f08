"""RazorpayX contacts and fund accounts (bank accounts and VPAs): create, or find the same one again, and fetch."""

from __future__ import annotations

from typing import Any

from flask import Response

from ..core import current_sandbox
from ._blueprint import bp
from ._common import RazorpayError, _body, _get, _json, _notes, _now, _public, _required, _rid


@bp.post("/v1/contacts")
def create_contact() -> Response:
    sb = current_sandbox()
    body = _body()
    name = str(_required(body, "name"))
    fields = {k: body.get(k) for k in ("email", "contact", "type", "reference_id")}
    with sb.store.lock:
        # RazorpayX returns the existing contact (200) when one with the same details exists.
        existing = sb.store.find(
            lambda o: (
                o.get("entity") == "contact" and o["name"] == name and all(o.get(k) == v for k, v in fields.items())
            )
        )
        if existing:
            return _json(_public(existing[0]), 200)
        contact = sb.store.put(
            {
                "id": _rid("cont"),
                "entity": "contact",
                "name": name,
                **fields,
                "batch_id": None,
                "active": True,
                "notes": _notes(body.get("notes")),
                "created_at": _now(),
            }
        )
    return _json(_public(contact), 201)


@bp.get("/v1/contacts/<contact_id>")
def fetch_contact(contact_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), contact_id, "contact")))


@bp.post("/v1/fund_accounts")
def create_fund_account() -> Response:
    sb = current_sandbox()
    body = _body()
    contact = _get(sb, str(_required(body, "contact_id")), "contact")
    account_type = _required(body, "account_type")
    details: dict[str, Any]
    if account_type == "bank_account":
        bank = body.get("bank_account") or {}
        for name in ("name", "ifsc", "account_number"):
            if not bank.get(name):
                raise RazorpayError(f"The bank_account.{name} field is required.", field=f"bank_account.{name}")
        ifsc, number = str(bank["ifsc"]).upper(), str(bank["account_number"])
        if len(ifsc) != 11 or not ifsc[:4].isalpha() or ifsc[4] != "0":
            raise RazorpayError("The ifsc must be 11 characters (4 letters, 0, 6 characters).", field="ifsc")
        if not number.isdigit() or not 5 <= len(number) <= 35:
            raise RazorpayError("The account number is invalid.", field="account_number")
        details = {"ifsc": ifsc, "bank_name": f"{ifsc[:4]} Bank", "name": str(bank["name"]), "account_number": number}
    elif account_type == "vpa":
        address = str((body.get("vpa") or {}).get("address") or "")
        if "@" not in address:
            raise RazorpayError("Invalid VPA. Please enter a valid Virtual Payment Address", field="vpa.address")
        details = {"address": address}
    else:
        raise RazorpayError("The selected account type is invalid.", field="account_type")
    with sb.store.lock:
        existing = sb.store.find(
            lambda o: (
                o.get("entity") == "fund_account"
                and o["contact_id"] == contact["id"]
                and o.get(account_type) == details
                and o["active"]
            )
        )
        if existing:
            return _json(_public(existing[0]), 200)
        fund_account = sb.store.put(
            {
                "id": _rid("fa"),
                "entity": "fund_account",
                "contact_id": contact["id"],
                "account_type": account_type,
                account_type: details,
                "batch_id": None,
                "active": True,
                "created_at": _now(),
            }
        )
    return _json(_public(fund_account), 201)


@bp.get("/v1/fund_accounts/<fund_account_id>")
def fetch_fund_account(fund_account_id: str) -> Response:
    return _json(_public(_get(current_sandbox(), fund_account_id, "fund_account")))
