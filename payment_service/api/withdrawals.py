"""Withdrawals: POST /withdrawals (withdrawals:write) and GET /withdrawals/{id} (withdrawals:read).

The body holds the beneficiary's full bank account number. It is exempt from the card-number guard
(api/parsing.py), handed to the service in memory, and nowhere else: not stored (only the last four
digits), not logged, not in the response, not in the stored idempotency fingerprint (a keyed hash
replaces it there, since a plain hash of a 9-18 digit number could be reversed by brute force).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

from flask import Blueprint, Response, jsonify

from ..domain.errors import NotFound
from ..domain.events import rfc3339
from ..domain.withdrawals import Withdrawal
from ..gateways.base import Beneficiary
from ..services import withdrawals as withdrawal_service
from . import openapi, parsing, schemas
from .auth import require_scope
from .context import container
from .display import amount_display
from .idempotent import run_idempotent
from .schemas import WithdrawalOut, WithdrawalRequest

bp = Blueprint("withdrawals", __name__)


def withdrawal_json(w: Withdrawal, locale: str) -> dict[str, Any]:
    """The withdrawal as the body of a response: validated and dumped by WithdrawalOut, which documents it."""
    return schemas.body(WithdrawalOut, {
        "id": w.id,
        "user_id": w.user_id,
        "amount": w.amount,
        "currency": w.currency,
        "mode": w.mode,
        "status": w.status,
        "utr": w.utr,
        "beneficiary": w.beneficiary_summary(),
        "failure_reason": w.failure_reason,
        "created_at": rfc3339(w.created_at),
        "updated_at": rfc3339(w.updated_at),
        "canonical_amount": w.canonical_amount,
        "canonical_currency": w.canonical_currency,
        "amount_display": amount_display(w.amount, w.currency, locale),
    })


def _locale() -> str:
    return container().settings.DISPLAY_LOCALE


def _fingerprint_body(body: Any, secret: str) -> Any:
    """The request body with the account number replaced by an HMAC of it (same number, same value)."""
    out = copy.deepcopy(body)
    beneficiary = out.get("beneficiary") if isinstance(out, dict) else None
    if isinstance(beneficiary, dict) and isinstance(beneficiary.get("account_number"), str):
        key = hmac.new(secret.encode(), b"withdrawal-account-fingerprint", hashlib.sha256).digest()
        digest = hmac.new(key, beneficiary["account_number"].encode(), hashlib.sha256)
        beneficiary["account_number"] = digest.hexdigest()
    return out


@bp.post("/withdrawals")
def create_withdrawal() -> Response:
    principal = require_scope("withdrawals:write")
    req: WithdrawalRequest = parsing.validated(WithdrawalRequest)
    b = req.beneficiary
    c = container()
    cmd = withdrawal_service.RequestWithdrawal(
        user_id=req.user_id,
        amount=req.amount,
        currency=req.currency,
        mode=req.mode,
        beneficiary=Beneficiary(name=b.name, account_number=b.account_number, ifsc=b.ifsc, vpa=b.vpa),
    )
    flow = withdrawal_service.WithdrawalFlow(cmd, c.payout_gateway(), c.withdrawal_settings())
    fingerprint_body = _fingerprint_body(parsing.body(), c.settings.EVENT_SIGNING_KEY)
    return run_idempotent(principal, flow, _render, fingerprint_body=fingerprint_body)


def _render(withdrawal: Withdrawal) -> tuple[dict[str, Any], int]:
    # 202 whatever the status: a payout settles later (webhook or poll); FAILED if refused at once.
    return withdrawal_json(withdrawal, _locale()), 202


@bp.get("/withdrawals/<withdrawal:withdrawal_id>")
def get_withdrawal(withdrawal_id: str) -> Response:
    require_scope("withdrawals:read")
    with container().uow_factory() as uow:
        withdrawal = uow.withdrawals.get(withdrawal_id)
    if withdrawal is None:
        raise NotFound(f"withdrawal {withdrawal_id} not found")
    return jsonify(withdrawal_json(withdrawal, _locale()))


_common = {
    "401": openapi.problem_ref("no or invalid credential"),
    "403": openapi.problem_ref("a caller without the scope"),
    "429": openapi.problem_ref("too many requests; see Retry-After"),
}
openapi.document("/withdrawals", "post", {
    "summary": "Pay out to a bank account (NEFT, IMPS) or a UPI address (service clients with withdrawals:write)",
    "description": "Statuses: REQUESTED -> PROCESSING -> SETTLED | FAILED, and SETTLED -> REVERSED; "
                   "WITHDRAWAL_SETTLED, WITHDRAWAL_FAILED and WITHDRAWAL_REVERSED events follow. The full "
                   "account number is never stored, returned or logged: only its last four digits.",
    "tags": ["withdrawals"],
    "security": [{"apiKey": []}],
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": openapi.model_ref(WithdrawalRequest)}}},
    "responses": {
        "202": openapi.json_body(WithdrawalOut, "the withdrawal: PROCESSING (usually), SETTLED, or FAILED if the "
                                                "gateway refused it at once"),
        "400": openapi.problem_ref("malformed JSON or missing Idempotency-Key"),
        "409": openapi.problem_ref("idempotency_key_reused or idempotency_key_in_use"),
        "422": openapi.problem_ref("invalid input: one `errors` entry per field"),
        "503": openapi.problem_ref("the gateway did not answer: the withdrawal is REQUESTED; retry with the same "
                                   "Idempotency-Key and body"),
        **_common,
    },
})
openapi.document("/withdrawals/{withdrawal_id}", "get", {
    "summary": "One withdrawal (service clients with withdrawals:read)",
    "tags": ["withdrawals"], "security": [{"apiKey": []}],
    "parameters": [{"name": "withdrawal_id", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": openapi.json_body(WithdrawalOut, "the withdrawal"),
                  "404": openapi.problem_ref("no such withdrawal"), **_common},
})
