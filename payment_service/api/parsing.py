"""Request bodies: JSON only, parsed once, refused when malformed or when they hold card data."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, g, request
from pydantic import BaseModel, ValidationError

from ..domain.cards import find_card_number_field
from ..domain.errors import CardDataNotAccepted, ValidationFailed
from .errors import domain_error_response, problem

# Fields that may legitimately hold a long digit string: a bank account number is not card data,
# but it is masked and never stored in full (see the withdrawals view).
CARD_CHECK_EXEMPT_PATHS = {"/withdrawals": {"beneficiary.account_number"}}


def _exempt(body: Any, path: str) -> Any:
    fields = CARD_CHECK_EXEMPT_PATHS.get(path)
    if not fields or not isinstance(body, dict):
        return body
    copy = json.loads(json.dumps(body))
    for dotted in fields:
        node = copy
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return copy


def guard_current_request() -> Response | None:
    if not request.is_json:
        return problem(415, "unsupported_media_type", "Unsupported Media Type", "send the body as application/json")
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return problem(400, "malformed_json", "Malformed JSON", "the request body is not valid JSON")
    field = find_card_number_field(_exempt(body, request.path))
    if field is not None:
        # Say where, never what: the value must not be echoed back or logged.
        exc = CardDataNotAccepted(
            "raw card numbers are not accepted; tokenise the card with the gateway's client SDK",
            field=field,
        )
        return domain_error_response(exc)
    g.json_body = body
    return None


def body() -> Any:
    if "json_body" not in g:
        failure = guard_current_request()
        if failure is not None:
            raise ValidationFailed("the request body must be a JSON object")
    return g.json_body


def validated(model: type[BaseModel]) -> Any:
    """Validate the JSON body against a pydantic model; every problem becomes one `errors` entry."""
    data = body()
    if not isinstance(data, dict):
        raise ValidationFailed("the request body must be a JSON object", field="(body)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"]}
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise ValidationFailed("the request body is invalid", errors=errors) from None


C = TypeVar("C")


def page_query(errors: list[dict[str, str]], decode: Callable[[str], C], *, default_limit: int
               ) -> tuple[int, C | None]:
    """A list's `limit` (1 to 100) and `cursor` (decoded by `decode`; empty: the first page) from the query
    string; each bad one adds its entry to `errors`."""
    args = request.args
    try:
        limit = int(args.get("limit", str(default_limit)))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        errors.append({"field": "limit", "message": "must be an integer from 1 to 100"})
        limit = default_limit
    cursor = None
    if args.get("cursor"):
        try:
            cursor = decode(args["cursor"])
        except (ValueError, UnicodeDecodeError):
            errors.append({"field": "cursor", "message": "not a cursor this API returned"})
    return limit, cursor
