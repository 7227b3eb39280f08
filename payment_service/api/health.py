"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from flask import Blueprint, Response, g, has_app_context, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from sqlalchemy import text

from ..adapters import migrate
from ..adapters.lifecycle_metrics import LifecycleCollector
from ..adapters.outbox_metrics import install_outbox_collector, outbox_collector  # outbox backlog metrics
from ..adapters.reconciliation_metrics import ReconciliationCollector  # settlement reconciliation
from ..adapters.webhook_metrics import WebhookInboxCollector
from . import schemas
from .context import container
from .schemas import Health, Readiness

logger = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def start_timer() -> None:
    g.started = time.perf_counter()


def record_request(response: Response) -> Response:
    started = g.get("started")
    if started is not None:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
    return response


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(schemas.body(Health, {"status": "ok"}))


def _check_database() -> str | None:
    try:
        with container().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if not migrate.at_head(conn):
                return "migrations not at head (run `payment-service db upgrade`)"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return f"unreachable: {type(exc).__name__}"
    return None


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    # The database and the migrations only. Not the broker: the API never talks to Kafka (the outbox
    # decouples them), and a broker outage must not take every replica out of the load balancer. Not
    # the gateways either: one gateway down is its circuit breaker's business, not the instance's.
    checks = {"database": _check_database()}
    failing = {name: why for name, why in checks.items() if why}
    body = {name: ("ok" if not why else why) for name, why in checks.items()}
    if failing:
        from .errors import problem

        names = ", ".join(sorted(failing))
        response = problem(
            503, "not_ready", "Service Unavailable", f"not ready: {names}", checks=body,
            errors=[{"field": name, "message": why} for name, why in sorted(failing.items())],
        )
        response.headers["Retry-After"] = "5"
        return response, 503
    return jsonify(schemas.body(Readiness, {"status": "ready", "checks": body})), 200


# --- relay: outbox backlog metrics, read from the database at scrape time ---


def _scrape_engine() -> Any:
    return container().engine if has_app_context() else None


install_outbox_collector("api", _scrape_engine)  # once per process: the registry refuses a second
# --- end relay ---
_LIFECYCLE = LifecycleCollector(_scrape_engine)
REGISTRY.register(_LIFECYCLE)
_WEBHOOK_INBOX = WebhookInboxCollector(_scrape_engine)
REGISTRY.register(_WEBHOOK_INBOX)
_RECONCILIATION = ReconciliationCollector(_scrape_engine)
REGISTRY.register(_RECONCILIATION)


@bp.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Under gunicorn with several workers each keeps its own counters; aggregate them here.
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        # --- relay ---
        collector = outbox_collector()
        if collector is not None:
            registry.register(collector)
        # --- end relay ---
        registry.register(_LIFECYCLE)
        registry.register(_WEBHOOK_INBOX)
        registry.register(_RECONCILIATION)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, mimetype=CONTENT_TYPE_LATEST)


__all__ = ["bp", "record_request", "start_timer"]
