"""What every Razorpay endpoint shares: errors, JSON bodies and fields, ids, collections and list windows."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
from typing import Any

from flask import Response, request

from ..core import Sandbox, current_sandbox, public_copy
from ._blueprint import bp

NOT_FOUND = "The id provided does not exist"
_ALNUM = string.ascii_letters + string.digits


class RazorpayError(Exception):
    def __init__(
        self,
        description: str,
        *,
        status: int = 400,
        code: str = "BAD_REQUEST_ERROR",
        field: str | None = None,
        reason: str = "input_validation_failed",
        source: str = "business",
        step: str = "payment_initiation",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description)
        self.body = {
            "error": {
                "code": code,
                "description": description,
                "source": source,
                "step": step,
                "reason": reason,
                "field": field,
                "metadata": metadata or {},
            }
        }
        self.status = status


@bp.errorhandler(RazorpayError)
def _razorpay_error(exc: RazorpayError) -> Response:
    return _json(exc.body, exc.status)


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _now() -> int:
    return int(time.time())


def _rid(prefix: str) -> str:
    """Razorpay-looking ids: prefix + 14 base62 characters."""
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(14))


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as Razorpay shows it: without the sandbox's own `_` bookkeeping fields."""
    return public_copy(obj)


def _collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entity": "collection", "count": len(items), "items": [_public(i) for i in items]}


def _body() -> dict[str, Any]:
    if not request.data:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise RazorpayError("The request body is not valid JSON")
    return body


def _get(sb: Sandbox, object_id: str, entity: str) -> dict[str, Any]:
    obj = sb.store.get(object_id)
    if obj is None or obj.get("entity") != entity:
        raise RazorpayError(NOT_FOUND, field="id")
    return obj


def _notes(value: Any) -> dict[str, Any]:
    if value is None or value == []:
        return {}
    if not isinstance(value, dict) or len(value) > 15:
        raise RazorpayError("notes must be an object of at most 15 key-value pairs", field="notes")
    return {str(k): str(v)[:256] for k, v in value.items()}


def _amount(value: Any, currency: str, field: str = "amount") -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise RazorpayError(f"The {field} must be an integer.", field=field)
    amount = int(value)
    if currency == "INR" and amount < 100:
        raise RazorpayError("The amount must be at least INR 1.00", field=field)
    if amount <= 0:
        raise RazorpayError(f"The {field} must be greater than zero.", field=field)
    return amount


def _required(body: dict[str, Any], name: str) -> Any:
    if body.get(name) in (None, ""):
        raise RazorpayError(f"The {name} field is required.", field=name)
    return body[name]


def _sign(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


# Razorpay's bounds on `from` / `to` (its error says so: "from must be between 946684800 and 4765046400").
_MIN_TS, _MAX_TS = 946684800, 4765046400


def _list_window(entity: str) -> Response:
    """Razorpay's collection listing: `from` and `to` (unix seconds, both inclusive) on `created_at`,
    `count` 1 to 100 (default 10), `skip` (default 0); newest first."""
    sb = current_sandbox()
    bounds: dict[str, int | None] = {}
    for name in ("from", "to", "count", "skip"):
        raw = request.args.get(name)
        if raw is None or raw == "":
            bounds[name] = None
            continue
        if not raw.isdigit():
            raise RazorpayError(f"The {name} must be an integer.", field=name)
        bounds[name] = int(raw)
    for name in ("from", "to"):
        value = bounds[name]
        if value is not None and not _MIN_TS <= value <= _MAX_TS:
            raise RazorpayError(f"{name} must be between {_MIN_TS} and {_MAX_TS}", field=name)
    count = 10 if bounds["count"] is None else bounds["count"]
    if not 1 <= count <= 100:
        raise RazorpayError("The count must be between 1 and 100.", field="count")
    skip = bounds["skip"] or 0
    start, end = bounds["from"], bounds["to"]
    if start is not None and end is not None and start > end:
        raise RazorpayError("from must be less than or equal to to", field="from")
    items = sb.store.find(
        lambda o: o.get("entity") == entity
        and (start is None or o["created_at"] >= start)
        and (end is None or o["created_at"] <= end)
    )
    items.sort(key=lambda o: (o["created_at"], o.get("_seq", 0)), reverse=True)
    return _json(_collection(items[skip : skip + count]))
