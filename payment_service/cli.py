"""The `payment-service` command: serve, db, dev, sandbox (and, as they land, worker, relay, clients)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from config import load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """payment-service: wallet top-ups through Stripe and Razorpay."""


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database at DATABASE_URL up to REVISION (default: head)."""
    from .adapters import migrate

    settings = load_settings()
    _ensure_sqlite_dir(settings.DATABASE_URL)
    migrate.upgrade(settings.DATABASE_URL, revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (e.g. -1, or base)."""
    from .adapters import migrate

    migrate.downgrade(load_settings().DATABASE_URL, revision)
    click.echo(f"database at {revision}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and whether it is at head."""
    from .adapters import migrate
    from .bootstrap import make_engine

    engine = make_engine(load_settings().DATABASE_URL)
    with engine.connect() as conn:
        current = migrate.current_revisions(conn)
    heads = migrate.head_revisions()
    click.echo(f"current: {', '.join(sorted(current)) or '(empty)'}; head: {', '.join(sorted(heads))}")
    sys.exit(0 if current == heads else 1)


@main.command()
@click.option("--bind", default=lambda: os.environ.get("BIND", "0.0.0.0:8000"), show_default="0.0.0.0:8000")
@click.option("--workers", type=int, default=lambda: int(os.environ.get("WEB_CONCURRENCY", "2")), show_default="2")
@click.option("--threads", type=int, default=lambda: int(os.environ.get("GUNICORN_THREADS", "8")), show_default="8")
def serve(bind: str, workers: int, threads: int) -> None:
    """Run the HTTP API under gunicorn."""
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
    args = [
        gunicorn, "--bind", bind, "--workers", str(workers), "--threads", str(threads),
        "--worker-class", "gthread", "--timeout", "60", "--graceful-timeout", "20",
        "--access-logfile", "-", "--access-logformat", '{"access":"%(r)s","status":%(s)s,"ms":%(M)s}',
        "payment_service.api:create_app()",
    ]
    os.execv(gunicorn, args)  # noqa: S606 - replace this process with gunicorn, same environment


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=12111, show_default=True)
def sandbox(host: str, port: int) -> None:
    """Run the gateway sandbox (Stripe and Razorpay test APIs). See docs/sandbox.md."""
    from .gateways.sandbox.core import config_from_env
    from .gateways.sandbox.server import serve_forever

    cfg = config_from_env()
    cfg.public_url = os.environ.get("SANDBOX_PUBLIC_URL", f"http://{host}:{port}")
    click.echo(f"gateway sandbox on http://{host}:{port} (Stripe: /stripe, Razorpay: /razorpay, admin: /_sandbox)")
    serve_forever(cfg, host, port)


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    from .gateways.sandbox.server import free_port

    return preferred if _port_free(preferred) else free_port()


@main.command()
@click.option("--port", type=int, default=8000, show_default=True, help="API port")
@click.option("--sandbox-port", type=int, default=12111, show_default=True)
@click.option("--broker-port", type=int, default=19092, show_default=True)
def dev(port: int, sandbox_port: int, broker_port: int) -> None:
    """Everything locally: a SQLite database (migrated), a local Kafka-compatible broker, the gateway
    sandbox and the API, in one process. Ctrl-C stops it all."""
    from werkzeug.serving import make_server

    from .adapters import migrate
    from .api import create_app
    from .gateways.sandbox.core import SandboxConfig
    from .gateways.sandbox.server import SandboxServer
    from .localparts.broker import TansuBroker

    port, sandbox_port, broker_port = _pick_port(port), _pick_port(sandbox_port), _pick_port(broker_port)
    db_url = os.environ.get("DATABASE_URL", "sqlite:///instance/payment-service.sqlite3")
    _ensure_sqlite_dir(db_url)
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
    try:
        while not stop.is_set():
            time.sleep(0.2)
    finally:
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


if __name__ == "__main__":
    main()
