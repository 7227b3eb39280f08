"""Local commands of `payment-service`: `sandbox` and `dev` (everything in one process). Not shipped to production.

They live outside the product package because they run the gateway sandbox and a local broker;
payment_service/cli.py adds them to the command when this package is installed (it is, by setup.cfg).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import click

from config import load_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=12111, show_default=True)
def sandbox(host: str, port: int) -> None:
    """Run the gateway sandbox (Stripe and Razorpay test APIs). See docs/sandbox.md."""
    # Before anything imports socket, ssl or threading users (Flask, requests): the sandbox runs under
    # gunicorn's gevent worker, and its webhook thread and `latency` faults must yield, not block.
    from gevent import monkey

    monkey.patch_all()
    from gateway_sandbox.config import config_from_env
    from gateway_sandbox.server import serve_forever

    cfg = config_from_env()
    cfg.public_url = os.environ.get("SANDBOX_PUBLIC_URL", f"http://{host}:{port}")
    click.echo(f"gateway sandbox on http://{host}:{port} (Stripe: /stripe, Razorpay: /razorpay, admin: /_sandbox)")
    serve_forever(cfg, host, port)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    from gateway_sandbox.server import free_port

    return preferred if _port_free(preferred) else free_port()


@click.command()
@click.option("--port", type=int, default=8000, show_default=True, help="API port")
@click.option("--sandbox-port", type=int, default=12111, show_default=True)
@click.option("--broker-port", type=int, default=19092, show_default=True)
def dev(port: int, sandbox_port: int, broker_port: int) -> None:
    """Everything locally: a SQLite database (migrated), a local Kafka-compatible broker, the gateway
    sandbox and the API, in one process. Ctrl-C stops it all."""
    from werkzeug.serving import make_server

    from gateway_sandbox import SandboxConfig
    from gateway_sandbox.server import SandboxServer
    from localparts.broker import TansuBroker
    from payment_service.adapters import migrate
    from payment_service.api import create_app

    port, sandbox_port, broker_port = _pick_port(port), _pick_port(sandbox_port), _pick_port(broker_port)
    db_url = os.environ.get("DATABASE_URL", "sqlite:///instance/payment-service.sqlite3")
    migrate.ensure_sqlite_dir(db_url)
    migrate.upgrade(db_url)

    broker = TansuBroker(port=broker_port)
    broker.start()
    api_url = f"http://127.0.0.1:{port}"
    sandbox_server = SandboxServer(
        SandboxConfig(
            stripe_webhook_url=f"{api_url}/webhooks/stripe",
            razorpay_webhook_url=f"{api_url}/webhooks/razorpay",
        ),
        port=sandbox_port,
    ).start()

    overrides: dict[str, Any] = {
        "DATABASE_URL": db_url,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "STRIPE_API_BASE": sandbox_server.stripe_api_base,
        "RAZORPAY_API_BASE": sandbox_server.razorpay_api_base,
        "FX_MAX_AGE_SECONDS": 0,  # the shipped sample rates (config/fx/), whatever their date
    }
    for name, value in overrides.items():
        os.environ.setdefault(name, str(value))
    settings = load_settings()
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)

    click.echo(
        "\npayment-service dev is up:\n"
        f"  API             {api_url}  (docs {api_url}/docs, ready {api_url}/readyz)\n"
        f"  database        {settings.DATABASE_URL}\n"
        f"  Kafka broker    {broker.bootstrap}  (topic {settings.EVENTS_TOPIC})\n"
        f"  gateway sandbox {sandbox_server.url}  (Stripe {sandbox_server.stripe_api_base}, "
        f"Razorpay {sandbox_server.razorpay_api_base})\n"
        f"  demo user token {_demo_token(settings)}\n"
        "Ctrl-C stops everything.\n"
    )
    stop = threading.Event()

    def _shutdown(*_a: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # --- relay: publishes the outbox to the local broker ---
    dev_relay, relay_thread = _start_dev_relay(settings)
    # --- end relay ---
    # --- worker: applies webhooks, expires 3-D Secure, reconciles ---
    from payment_service.worker.jobs import Worker

    dev_worker = Worker(app.extensions["payment_service"])
    dev_worker.start()
    # --- end worker ---
    try:
        while not stop.is_set():
            time.sleep(0.2)
    finally:
        dev_worker.shutdown(wait=False)
        # --- relay ---
        dev_relay.stop()
        relay_thread.join(15)
        # --- end relay ---
        server.shutdown()
        sandbox_server.stop()
        broker.stop()
        click.echo("stopped")


def _demo_token(settings: Any) -> str:
    import jwt

    if not settings.JWT_SECRET:
        return "(RS256 configured: no demo token)"
    claims = {"sub": "u_demo", "aud": settings.JWT_AUDIENCE, "exp": int(time.time()) + 86400}
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    return jwt.encode(claims, settings.JWT_SECRET, algorithm="HS256")




def _start_dev_relay(settings: Any) -> tuple[Any, threading.Thread]:
    """The relay of `payment-service dev`, in a thread of that process (its metrics are on the API's /metrics)."""
    from payment_service.bootstrap import build_relay

    outbox_relay = build_relay(settings)
    thread = threading.Thread(target=outbox_relay.run, name="outbox-relay", daemon=True)
    thread.start()
    return outbox_relay, thread
