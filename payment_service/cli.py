"""The `payment-service` command: serve, db, dev, sandbox (and, as they land, worker, relay, clients)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
@click.option(
    "--worker-class",
    type=click.Choice(["gevent", "gthread", "sync"]),
    default=lambda: os.environ.get("GUNICORN_WORKER_CLASS", "gevent"),
    show_default="gevent",
    help="gevent: each request a greenlet, so a slow gateway call costs a greenlet, not a thread (see "
    "docs/serving.md); gthread: a pool of --threads threads per worker; sync: one request per worker at a time",
)
@click.option(
    "--worker-connections", type=int,
    default=lambda: int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000")), show_default="1000",
    help="gevent: requests (connections) each worker holds at once",
)
@click.option("--threads", type=int, default=lambda: int(os.environ.get("GUNICORN_THREADS", "8")), show_default="8",
              help="gthread: threads per worker")
def serve(bind: str, workers: int, worker_class: str, worker_connections: int, threads: int) -> None:
    """Run the HTTP API under gunicorn."""
    gunicorn = shutil.which("gunicorn") or str(Path(sys.executable).with_name("gunicorn"))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: /metrics must add up all of them, not show the one that got the scrape.
        import tempfile

        path = tempfile.mkdtemp(prefix="payment-service-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        os.environ["PAYMENT_SERVICE_OWNS_METRICS_DIR"] = path  # removed by gunicorn_conf.on_exit
    args = [
        gunicorn, "--config", "python:payment_service.gunicorn_conf", "--bind", bind, "--workers", str(workers),
        "--worker-class", worker_class, "--timeout", "60", "--graceful-timeout", "20",
    ]
    if worker_class == "gevent":
        args += ["--worker-connections", str(worker_connections)]
    elif worker_class == "gthread":
        args += ["--threads", str(threads)]
    # No gunicorn access log: the app writes one JSON line per request itself, with its request id.
    args.append("payment_service.api:create_app()")
    os.execv(gunicorn, args)  # noqa: S606 - replace this process with gunicorn, same environment


@main.command()
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
    from gateway_sandbox.server import free_port

    return preferred if _port_free(preferred) else free_port()


@main.command()
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

    from .adapters import migrate
    from .api import create_app

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
    # --- relay: publishes the outbox to the local broker ---
    dev_relay, relay_thread = _start_dev_relay(settings)
    # --- end relay ---
    # --- worker: applies webhooks, expires 3-D Secure, reconciles ---
    from .worker.jobs import Worker

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



# --- worker: webhook applier and scheduled jobs (payment_service/worker/jobs.py) -----------


@main.command()
@click.option("--once", is_flag=True, help="run every job once and exit (prints what each did)")
def worker(once: bool) -> None:
    """Apply stored webhooks; expire PENDING_3DS payments; reconcile stuck PENDING ones; purge old rows."""
    from .bootstrap import bootstrap
    from .observability import configure_logging
    from .worker.jobs import run_all_once, run_worker

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    container = bootstrap(settings)
    if once:
        click.echo(run_all_once(container))
        return
    run_worker(container)


# --- end worker ----------------------------------------------------------------------------


# --- clients: service clients and their API keys ---------------------------------------


@contextmanager
def _api_clients() -> Iterator[Any]:
    """A repository in one transaction on DATABASE_URL: committed if the command succeeds."""
    from sqlalchemy.orm import Session

    from .adapters.api_clients import SqlAlchemyApiClientRepository
    from .bootstrap import make_engine
    from .domain.errors import DomainError

    engine = make_engine(load_settings().DATABASE_URL)
    try:
        with Session(engine) as session, session.begin():
            yield SqlAlchemyApiClientRepository(session)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        engine.dispose()


def _echo_issued(issued: Any, what: str) -> None:
    click.echo(f"{what} for client {issued.client_name} ({issued.client_id}); key prefix {issued.prefix}")
    click.echo("API key (shown once, store it now; only its hash is kept):")
    click.echo(issued.key)


@main.group()
def clients() -> None:
    """Service clients (X-API-Key callers): create, rotate keys, revoke, disable, list."""


@clients.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, help="payments:read, payments:refund, "
              "withdrawals:write or withdrawals:read; repeat for several")
def clients_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create client NAME with its first API key (printed once)."""
    with _api_clients() as repo:
        issued = repo.create_client(name, scopes)
    _echo_issued(issued, "created")


@clients.command("rotate")
@click.argument("name")
@click.option("--expire-old-in", type=click.IntRange(min=0), default=None, metavar="SECONDS",
              help="older keys stop working after SECONDS (default: they stay valid until revoked)")
def clients_rotate(name: str, expire_old_in: int | None) -> None:
    """Issue a new API key for NAME; both work until the old ones expire or are revoked."""
    with _api_clients() as repo:
        issued = repo.rotate(name, expire_old_in)
    _echo_issued(issued, "new key")
    if expire_old_in is not None:
        click.echo(f"older keys expire in {expire_old_in} s")


@clients.command("revoke")
@click.argument("name")
@click.option("--key-prefix", default=None, help="revoke only this key (its prefix, as `clients list` shows)")
def clients_revoke(name: str, key_prefix: str | None) -> None:
    """Revoke one key of NAME, or all of its keys."""
    with _api_clients() as repo:
        count = repo.revoke(name, key_prefix)
    click.echo(f"revoked {count} key(s) of client {name}")


@clients.command("disable")
@click.argument("name")
def clients_disable(name: str) -> None:
    """Disable client NAME: none of its keys authenticate any more."""
    with _api_clients() as repo:
        changed = repo.disable(name)
    click.echo(f"client {name} {'disabled' if changed else 'was already disabled'}")


@clients.command("list")
def clients_list() -> None:
    """Clients, scopes and key prefixes with their dates (never a key or a hash)."""
    from .domain.events import rfc3339, utcnow

    with _api_clients() as repo:
        infos = repo.list_clients()
    now = utcnow()

    def when(dt: Any) -> str:
        return rfc3339(dt) if dt is not None else "-"

    header = ("CLIENT", "ID", "STATUS", "SCOPES", "KEY", "KEY STATUS", "CREATED", "EXPIRES", "REVOKED")
    rows: list[tuple[str, ...]] = []
    for c in infos:
        status = "disabled" if c.disabled_at is not None else "active"
        scopes = ",".join(sorted(c.scopes))
        if not c.keys:
            rows.append((c.name, c.id, status, scopes, "-", "-", "-", "-", "-"))
        for k in c.keys:
            rows.append((c.name, c.id, status, scopes, k.prefix, k.status(now),
                         when(k.created_at), when(k.expires_at), when(k.revoked_at)))
    if not rows:
        click.echo("no clients")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# --- end clients ---------------------------------------------------------------------------


# --- relay: the outbox relay (payment_service/worker/relay.py) -----------------------------


@main.command()
def relay() -> None:
    """Publish outbox rows to Kafka. Run several for availability: one leads, the others stand by.
    SIGTERM or Ctrl-C stops it after the batch in flight."""
    from prometheus_client import start_http_server

    from .adapters.outbox_metrics import install_outbox_collector
    from .bootstrap import make_engine
    from .observability import configure_logging
    from .worker.relay import OutboxRelay

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    engine = make_engine(settings.DATABASE_URL, pool_size=2, max_overflow=2)
    outbox_relay = OutboxRelay(engine, settings)

    def _stop(*_a: Any) -> None:
        outbox_relay.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    metrics_server = None
    if settings.RELAY_METRICS_PORT:
        install_outbox_collector("relay", lambda: engine)
        metrics_server, _thread = start_http_server(settings.RELAY_METRICS_PORT)
    try:
        outbox_relay.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        engine.dispose()


def _start_dev_relay(settings: Any) -> tuple[Any, threading.Thread]:
    """The relay of `payment-service dev`, in a thread of that process (its metrics are on the API's /metrics)."""
    from .bootstrap import make_engine
    from .worker.relay import OutboxRelay

    outbox_relay = OutboxRelay(make_engine(settings.DATABASE_URL), settings)
    thread = threading.Thread(target=outbox_relay.run, name="outbox-relay", daemon=True)
    thread.start()
    return outbox_relay, thread


# --- end relay -----------------------------------------------------------------------------


if __name__ == "__main__":
    main()
