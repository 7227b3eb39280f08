"""Path ids: URL converters that match only ids of ours, and the OpenAPI pattern of each path parameter.

`/payments/<payment:payment_id>` matches `pay_` and lower-case base32 only. Anything else is not a
route: 404 from routing, before auth, a view or a query (the database never sees a non-ASCII or
10 kB id), and `/payments/topup` is not mistaken for a payment id (so `Allow` is right).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.routing import BaseConverter

from ..domain import ids

# converter name -> (id prefix, the path parameter it is used for)
KINDS: dict[str, tuple[str, str]] = {
    "payment": (ids.PAYMENT, "payment_id"),
    "refund": (ids.REFUND, "refund_id"),
    "method": (ids.PAYMENT_METHOD, "method_id"),
    "withdrawal": (ids.WITHDRAWAL, "withdrawal_id"),
}


def _converter(prefix: str) -> type[BaseConverter]:
    return type(f"{prefix.title()}IdConverter", (BaseConverter,), {"regex": ids.pattern(prefix)[1:-1]})


def install(app: Flask) -> None:
    """Register the converters; before any blueprint, whose rules use them."""
    for name, (prefix, _param) in KINDS.items():
        app.url_map.converters[name] = _converter(prefix)


def document_path_ids(paths: dict[str, dict[str, Any]]) -> None:
    """Give every documented id path parameter its pattern (what the converter matches)."""
    patterns = {param: ids.pattern(prefix) for prefix, param in KINDS.values()}
    for operations in paths.values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in patterns:
                    parameter["schema"] = {"type": "string", "pattern": patterns[parameter["name"]]}
