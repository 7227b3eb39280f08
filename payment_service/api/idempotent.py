"""Running a money-moving POST under its Idempotency-Key (CONTRACT.md "Idempotency")."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Response, request

from ..domain.errors import DependencyUnavailable, DomainError, GatewayUnavailable
from ..domain.principal import Principal
from ..services import idempotency
from . import parsing
from .context import container

logger = logging.getLogger(__name__)


def run_idempotent(
    principal: Principal,
    resource_prefix: str,
    handler: Callable[[str, bool], tuple[dict[str, Any], int]],
    fingerprint_body: Any = None,  # --- withdrawals: a body with secrets replaced (see api/withdrawals.py)
) -> Response:
    """`handler(resource_id, resumed)` does the work and returns (body, status); replays skip it entirely.

    `resumed` is True when an earlier attempt with the same key stopped half-way (crash, gateway
    timeout): the handler must then look for the resource it may already have created.
    """
    c = container()
    key = idempotency.validate_key(request.headers.get("Idempotency-Key"))
    body = parsing.body() if fingerprint_body is None else fingerprint_body
    fingerprint = idempotency.request_fingerprint(request.method, request.path, body)
    claim = idempotency.claim(
        c.uow_factory,
        principal.caller_key,
        key,
        request.method,
        request.path,
        fingerprint,
        resource_prefix,
        c.settings.IDEMPOTENCY_KEY_TTL_SECONDS,
        lock_seconds=c.settings.IDEMPOTENCY_LOCK_SECONDS,
    )
    if claim.replay:
        resp = Response(claim.record.response_body, status=claim.record.response_status, mimetype="application/json")
        resp.headers["Idempotent-Replayed"] = "true"
        return resp
    assert claim.record.resource_id is not None
    try:
        body, status = handler(claim.record.resource_id, claim.resumed)
    except (GatewayUnavailable, DependencyUnavailable):
        # Outcome unknown: keep the key and its resource id so a retry resumes the same record.
        idempotency.release(c.uow_factory, claim.record, forget=False)
        raise
    except DomainError:
        # Refused before anything moved (Stripe keeps no result when validation fails).
        idempotency.release(c.uow_factory, claim.record, forget=True)
        raise
    except BaseException:
        idempotency.release(c.uow_factory, claim.record, forget=False)
        raise
    text = json.dumps(body)
    idempotency.complete(c.uow_factory, claim.record, status, text)
    return Response(text, status=status, mimetype="application/json")
