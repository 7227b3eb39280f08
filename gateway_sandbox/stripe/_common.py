"""What every Stripe endpoint shares: errors, form parameters, rendering objects, and list pagination."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from flask import Response, g, request
from werkzeug.datastructures import MultiDict

from ..core import Sandbox, current_sandbox, public_copy
from ._blueprint import bp

API_VERSION = "2025-03-31.basil"
DOC_URL = "https://docs.stripe.com/error-codes"


# ---------------------------------------------------------------------------------------------
# Errors and responses
# ---------------------------------------------------------------------------------------------


class StripeApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"{DOC_URL}#{code.replace('_', '-')}"
        if param is not None:
            self.body["param"] = param
        if decline_code is not None:
            self.body["decline_code"] = decline_code
        if extra:
            self.body.update(extra)


def _missing(kind: str, object_id: str, param: str | None = None) -> StripeApiError:
    return StripeApiError(
        400 if param else 404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, indent=2), status=status, mimetype="application/json")


def _error_response(exc: StripeApiError) -> Response:
    body = dict(exc.body)
    body["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{g.get('request_id', 'req_sandbox')}"
    return _json({"error": body}, exc.status)


@bp.errorhandler(StripeApiError)
def _handle_stripe_error(exc: StripeApiError) -> Response:
    return _error_response(exc)


# ---------------------------------------------------------------------------------------------
# Parameters (Stripe form encoding: a[b]=1, a[0]=x, a[]=x)
# ---------------------------------------------------------------------------------------------


_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        value = {k: _listify(v) for k, v in value.items()}
        if value and all(k.isdigit() for k in value):
            return [value[k] for k in sorted(value, key=int)]
    return value


def parse_form(pairs: MultiDict[str, str]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs.items(multi=True):
        m = _KEY.match(key)
        if not m:
            raise StripeApiError(400, f"Invalid parameter name: {key}", param=key)
        path = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node = root
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if part == "":
                part = str(len(node))
            if last:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeApiError(400, f"Invalid parameter: {key}", param=key)
                node = child
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _params() -> dict[str, Any]:
    if "stripe_params" not in g:
        g.stripe_params = parse_form(request.args if request.method == "GET" else request.form)
    params: dict[str, Any] = g.stripe_params
    return params


def _check_known(params: dict[str, Any], allowed: set[str]) -> None:
    for key in params:
        if key not in allowed and key != "expand":
            raise StripeApiError(400, f"Received unknown parameter: {key}", code="parameter_unknown", param=key)


def _int(params: dict[str, Any], name: str, *, required: bool = False) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise StripeApiError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
        return None
    if not isinstance(raw, str) or not re.fullmatch(r"-?\d+", raw):
        raise StripeApiError(400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=name)
    return int(raw)


def _bool(params: dict[str, Any], name: str) -> bool:
    raw = params.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise StripeApiError(400, f"Invalid boolean: {raw}", param=name)
    return raw == "true"


def _str(params: dict[str, Any], name: str) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise StripeApiError(400, f"Invalid string: {name}", code="parameter_invalid_string", param=name)
    return raw


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    raw = params.get("metadata", {})
    if raw == "":
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise StripeApiError(400, "Invalid metadata: must be a hash of strings", param="metadata")
    if len(raw) > 50:
        raise StripeApiError(400, "Invalid metadata: at most 50 keys", param="metadata")
    return dict(raw)


def _expand_list() -> list[str]:
    raw = _params().get("expand", [])
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return raw
    raise StripeApiError(400, "Invalid expand", param="expand")


# ---------------------------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------------------------


def _sb() -> Sandbox:
    return current_sandbox()


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as Stripe shows it: without the sandbox's private `_` fields."""
    return public_copy(obj)


def _render(obj: dict[str, Any], expand: list[str] | None = None) -> dict[str, Any]:
    """An object as an answer shows it, with its `expand` paths expanded: for serialising at once.

    A shallow copy, unlike `_public`: only its own top-level keys are ever replaced here, and the sandbox
    changes its objects only by replacing top-level values (never a nested dict or list in place), so
    the nested values it shares with the stored object serialise the same as a deep copy of them."""
    out = {k: v for k, v in obj.items() if not k.startswith("_")}
    for path in expand if expand is not None else _expand_list():
        head, _, rest = path.partition(".")
        if head.startswith("data") and out.get("object") in ("list", "search_result"):
            out["data"] = [_render_dict(item, [rest] if rest else []) for item in out.get("data", [])]
            continue
        ref = out.get(head)
        if isinstance(ref, str):
            target = _sb().store.get(ref)
            if target is not None:
                out[head] = _render(target, [rest] if rest else [])
        elif isinstance(ref, dict) and rest:
            out[head] = _render_dict(ref, [rest])
    return out


def _render_dict(obj: dict[str, Any], expand: list[str]) -> dict[str, Any]:
    return _render(obj, expand) if expand else obj


def _now() -> int:
    return int(time.time())


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _get(kind: str, object_id: str, *, param: str | None = None) -> dict[str, Any]:
    obj = _sb().store.get(object_id)
    if obj is None or obj.get("object") != kind or obj.get("deleted"):
        raise _missing(kind, object_id, param)
    return obj


# ---------------------------------------------------------------------------------------------
# Lists: the `created` filter and cursor pagination
# ---------------------------------------------------------------------------------------------


_RANGE_OPS = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}


def _created_filter(params: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """Stripe's `created` list filter: `created=<unix ts>` (exactly), or any of `created[gt]`,
    `created[gte]`, `created[lt]`, `created[lte]`."""
    raw = params.get("created")
    if raw is None or raw == "":
        return lambda _o: True
    if isinstance(raw, str):
        exact = _int(params, "created")
        return lambda o: o.get("created") == exact
    if not isinstance(raw, dict) or not raw or set(raw) - set(_RANGE_OPS):
        raise StripeApiError(400, "Invalid created: use created[gt], created[gte], created[lt] or created[lte]",
                             param="created")
    bounds = []
    for op, value in raw.items():
        if not isinstance(value, str) or not re.fullmatch(r"\d+", value):
            raise StripeApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer",
                                 param=f"created[{op}]")
        bounds.append((_RANGE_OPS[op], int(value)))
    return lambda o: all(cmp(int(o.get("created", 0)), bound) for cmp, bound in bounds)


def _paginate(items: list[dict[str, Any]], url: str) -> Response:
    """Stripe's cursor pagination: newest first, `limit` 1 to 100 (default 10), `starting_after` or
    `ending_before` an object id of the previous page; an unknown cursor object is a 404, as at Stripe."""
    p = _params()
    limit = _int(p, "limit") or 10
    if not 1 <= limit <= 100:
        raise StripeApiError(400, "limit must be between 1 and 100", param="limit")
    items = sorted(items, key=lambda o: (o.get("created", 0), o["id"]), reverse=True)
    after, before = _str(p, "starting_after"), _str(p, "ending_before")
    if after and before:
        raise StripeApiError(400, "You may only specify one of these parameters: starting_after, ending_before.")
    cursor = after or before
    if cursor:
        ids = [o["id"] for o in items]
        if cursor not in ids:
            cursor_obj = _sb().store.get(cursor)
            if cursor_obj is None:
                raise _missing("object", cursor, "starting_after" if after else "ending_before")
            # The cursor object exists but is outside the filter: position it by its sort key.
            key = (cursor_obj.get("created", 0), cursor_obj["id"])
            if after:
                items = [o for o in items if (o.get("created", 0), o["id"]) < key]
            else:
                items = [o for o in items if (o.get("created", 0), o["id"]) > key]
        elif after:
            items = items[ids.index(after) + 1 :]
        else:
            items = items[: ids.index(cursor)]
    # ending_before: the `limit` objects just newer than the cursor, still newest first.
    page = items[-limit:] if before else items[:limit]
    body = {"object": "list", "data": [_render(o, []) for o in page], "has_more": len(items) > limit, "url": url}
    return _json(_render(body))
