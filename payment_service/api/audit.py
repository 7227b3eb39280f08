"""The audit trail at the HTTP edge: who acts in a request, a row per mutation answered, GET /audit-events.

Every request after `identify()` runs with an audit context (domain/audit.py): the caller, the
request id and the caller's address, so the status changes it makes are recorded with them in their
own transactions. After the answer, a mutation (POST, PUT, PATCH, DELETE; webhooks excepted: they
are recorded by the changes they make) gets one row of its own: accepted, refused (401, 403, 404,
409, 422, ...) or failed. The row holds the route, never the body, and the key's display prefix,
never the key.
"""

from __future__ import annotations

import base64
import logging
import re
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from ..domain import audit
from ..domain.errors import ValidationFailed
from ..domain.events import rfc3339, utcnow
from ..domain.principal import Principal
from ..services.audit import AuditFilter, AuditStore
from . import openapi
from .auth import is_exempt_path, require_scope
from .context import container
from .parsing import page_query
from .schemas import AuditEventList, body

logger = logging.getLogger(__name__)

bp = Blueprint("audit", __name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")  # "<method:method_id>" -> "<method_id>" in actions


def store() -> AuditStore:
    return container().audit_store()


def _actor(principal: Principal | None) -> audit.Actor:
    if principal is None:
        return audit.ANONYMOUS
    if principal.is_user:
        return audit.Actor("user", principal.id)
    return audit.Actor("client", principal.id, principal.key_prefix)


def begin() -> None:
    """before_request, after identify(): the audit context of this request."""
    principal = g.get("principal") or g.get("unverified_principal")
    call = None
    if request.method in MUTATING and request.url_rule is not None and not is_exempt_path(request.path):
        call = audit.ApiCall(request.method, _CONVERTER.sub(r"<\1>", request.url_rule.rule), request.path)
    ctx = audit.AuditContext(_actor(principal), g.get("request_id"), request.remote_addr, call)
    g.audit_context = ctx
    g.audit_token = audit.set_context(ctx)


def _resource_id(response: Response) -> str | None:
    rid: Any = None
    if response.status_code < 400 and response.is_json:
        body = response.get_json(silent=True)
        if isinstance(body, dict):
            rid = body.get("id")
    if not isinstance(rid, str):
        args = request.view_args or {}
        rid = next((v for v in args.values() if isinstance(v, str)), None)
    return rid if isinstance(rid, str) else None


def record(response: Response) -> Response:
    """after_request: the mutation's row, unless the transaction that stored its answer wrote it (a keyed
    mutation's last phase); whatever the answer, but 429 (a flood is not recorded row by row)."""
    ctx: audit.AuditContext | None = g.get("audit_context")
    status = response.status_code
    if ctx is None or ctx.call is None or status == 429:
        return response
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    if ctx.call.recorded_status == status and not replayed:
        return response
    detail = ""
    if status >= 400 and response.mimetype == "application/problem+json":
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            detail = body["code"]
    if replayed:
        detail = "(replayed)"
    row = audit.api_call(utcnow(), status, _resource_id(response), detail, ctx=ctx)
    if row is None:
        return response
    try:
        store().append(row)
    except SQLAlchemyError:
        # The answer stands (what it did is committed, and its state changes carry rows of their own).
        logger.error("audit row not written", extra={"action": row.action, "status": status}, exc_info=True)
    return response


def end(_exc: BaseException | None) -> None:
    token = g.pop("audit_token", None)
    if token is not None:
        audit.reset_context(token)


def init_app(app: Flask) -> None:
    """Call after auth.init_app: the context names the principal identify() found."""
    app.before_request(begin)
    app.after_request(record)
    app.teardown_request(end)
    app.register_blueprint(bp)


# --- GET /audit-events ------------------------------------------------------------------------


def _time(name: str, errors: list[dict[str, str]]) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise ValueError
        return value
    except ValueError:
        errors.append({"field": name, "message": "must be an RFC 3339 time with a zone, e.g. 2026-12-02T10:00:00Z"})
        return None


def _cursor(raw: str) -> int:
    value = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    if not value.startswith("a") or not value[1:].isdigit():
        raise ValueError
    return int(value[1:])


def _encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"a{row_id}".encode()).decode().rstrip("=")


def event_json(e: audit.AuditEvent) -> dict[str, Any]:
    return {
        "id": f"aud_{e.id}", "time": rfc3339(e.occurred_at), "actor": e.actor, "actor_key_prefix": e.actor_key_prefix,
        "action": e.action, "resource_type": e.resource_type, "resource_id": e.resource_id, "outcome": e.outcome,
        "http_status": e.http_status, "request_id": e.request_id, "source": e.source, "summary": e.summary,
        "seq": e.seq, "hash": e.hash,
    }


@bp.get("/audit-events")
def list_audit_events() -> Response:
    require_scope("audit:read")
    args = request.args
    errors: list[dict[str, str]] = []
    since, until = _time("since", errors), _time("until", errors)
    limit, before_id = page_query(errors, _cursor, default_limit=50)
    if errors:
        raise ValidationFailed("invalid query parameters", errors=errors)
    flt = AuditFilter(resource_id=args.get("resource_id") or None, actor=args.get("actor") or None,
                      action=args.get("action") or None, since=since, until=until)
    rows = store().page(flt, limit + 1, before_id)
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify(body(AuditEventList, {
        "data": [event_json(e) for e in rows],
        "has_more": more,
        "next_cursor": _encode_cursor(rows[-1].id) if more and rows[-1].id is not None else None,
    }))


openapi.document("/audit-events", "get", {
    "summary": "The audit trail, newest first, cursor paginated (service clients with audit:read)",
    "description": "One row per mutation answered (accepted or refused), per status change of a payment, refund "
                   "or withdrawal (whatever caused it: a request, a webhook, a job), and per client or key "
                   "operation. Never a card number, account number, key or secret. See docs/audit.md.",
    "tags": ["audit"], "security": [{"apiKey": []}],
    "parameters": [
        {"name": "resource_id", "in": "query", "schema": {"type": "string"}, "description": "e.g. pay_..."},
        {"name": "actor", "in": "query", "schema": {"type": "string"},
         "description": "exactly as in the rows: user:<id>, client:<id>, gateway:stripe, job:<name>, cli:<name>"},
        {"name": "action", "in": "query", "schema": {"type": "string"},
         "description": "e.g. payment.captured, or POST /withdrawals"},
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"},
         "description": "rows at or after this time"},
        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"},
         "description": "rows before this time"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"},
         "description": "next_cursor of the page before"},
    ],
    "responses": {
        "200": openapi.json_body(AuditEventList, "a page, newest first"),
        "401": openapi.problem_ref("no or invalid credential"),
        "403": openapi.problem_ref("not a service client with audit:read"),
        "422": openapi.problem_ref("bad query"),
        "429": openapi.problem_ref("too many requests; see Retry-After"),
    },
})
