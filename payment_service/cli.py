"""The `payment-service` command: serve, db, worker, relay, clients (and plugin commands: `sandbox`, `dev`)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from config import load_settings

from . import audit_cli

if TYPE_CHECKING:
    from .adapters.api_clients import SqlAlchemyApiClientRepository


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
    migrate.ensure_sqlite_dir(settings.DATABASE_URL)
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
    from .bootstrap import bootstrap

    container = bootstrap(load_settings(), pool_size=1)
    with container.engine.connect() as conn:
        current = migrate.current_revisions(conn)
    container.close()
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




# --- worker: webhook applier and scheduled jobs (payment_service/worker/jobs.py) -----------


@main.command()
@click.option("--once", is_flag=True, help="run every job once and exit (prints what each did)")
def worker(once: bool) -> None:
    """Apply stored webhooks; expire PENDING_3DS payments; reconcile stuck PENDING ones; purge old rows."""
    from .bootstrap import bootstrap
    from .observability import configure_logging
    from .startup import freeze_startup_heap
    from .worker.jobs import run_all_once, run_worker

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    container = bootstrap(settings)
    if once:
        click.echo(run_all_once(container))
        return
    freeze_startup_heap()
    run_worker(container)


# --- end worker ----------------------------------------------------------------------------


# --- settlement reconciliation (issue 13, docs/reconciliation.md) ---------------------------


@main.command("reconcile-day")
@click.option("--date", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="the UTC day to reconcile, YYYY-MM-DD")
@click.option("--gateway", type=click.Choice(["stripe", "razorpay"]), default=None,
              help="one gateway (default: both)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="where to write the reports (default: RECONCILE_REPORT_DIR)")
def reconcile_day(day: Any, gateway: str | None, out_dir: str | None) -> None:
    """Compare a day of the gateway's charges and refunds with ours; report what differs, change nothing.

    Writes reconcile-<gateway>-<day>.jsonl (one JSON object per difference) and .txt (a summary) per
    gateway, records each run in reconcile_runs, prints the summaries, and exits 1 when anything
    differs (2 when a run could not finish)."""
    from .adapters.reconciliation_store import write_report
    from .bootstrap import bootstrap
    from .domain.events import utcnow
    from .observability import configure_logging
    from .services import reconciliation

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    container = bootstrap(settings)
    target = out_dir or settings.RECONCILE_REPORT_DIR
    ledger, runs = container.settlement()
    differing = failed = False
    try:
        for name in [gateway] if gateway else ["stripe", "razorpay"]:
            try:
                report = reconciliation.run_day(
                    container.gateways()[name], ledger, runs, day.date(), utcnow,
                    write_report=lambda r: write_report(target, r),
                )
            except Exception as exc:  # noqa: BLE001 - recorded on the run; the other gateway still runs
                click.echo(f"reconciliation {name} {day.date().isoformat()}: FAILED ({type(exc).__name__}: {exc})",
                           err=True)
                failed = True
                continue
            assert report is not None  # not exclusive: always runs
            click.echo(report.summary())
            differing = differing or not report.clean
    finally:
        container.close()
    sys.exit(2 if failed else 1 if differing else 0)


# --- end settlement reconciliation -----------------------------------------------------------


# --- clients: service clients and their API keys ---------------------------------------


@contextmanager
def _api_clients() -> Iterator[SqlAlchemyApiClientRepository]:
    """The client store in one transaction on DATABASE_URL (bootstrap's): committed if the command succeeds."""
    from .audit_cli import cli_actor
    from .bootstrap import bootstrap
    from .domain import audit
    from .domain.errors import DomainError

    container = bootstrap(load_settings(), pool_size=1)
    try:
        # Every client or key operation writes its audit row, as cli:<operator>, in this transaction.
        with audit.acting_as(cli_actor()), container.api_clients() as repo:
            yield repo
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        container.close()


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
              "withdrawals:write, withdrawals:read or audit:read; repeat for several")
@click.option("--require-signing", is_flag=True, help="its mutations must carry X-Signature; prints the signing "
              "secret once (docs/auth.md)")
def clients_create(name: str, scopes: tuple[str, ...], require_signing: bool) -> None:
    """Create client NAME with its first API key (printed once)."""
    with _api_clients() as repo:
        issued = repo.create_client(name, scopes)
        secret = repo.enable_signing(name, load_settings().CLIENT_SIGNING_MASTER_KEY) if require_signing else None
    _echo_issued(issued, "created")
    if secret is not None:
        _echo_signing_secret(secret)


# --- signed requests (issue 12) ---


def _echo_signing_secret(issued: Any) -> None:
    click.echo(f"signing secret {issued.prefix} for client {issued.client_name}")
    click.echo("signing secret (shown once, store it now; it cannot be shown again):")
    click.echo(issued.secret)


@clients.command("require-signing")
@click.argument("name")
@click.option("--off", is_flag=True, help="stop requiring signatures (the secrets are kept)")
def clients_require_signing(name: str, off: bool) -> None:
    """Require X-Signature on every mutation of NAME (a first signing secret is printed if it has none)."""
    with _api_clients() as repo:
        if off:
            changed = repo.disable_signing(name)
            secret = None
        else:
            secret = repo.enable_signing(name, load_settings().CLIENT_SIGNING_MASTER_KEY)
    if off:
        click.echo(f"client {name} {'no longer requires' if changed else 'did not require'} signed mutations")
        return
    click.echo(f"client {name} now requires signed mutations")
    if secret is not None:
        _echo_signing_secret(secret)


@clients.command("rotate-signing-secret")
@click.argument("name")
@click.option("--expire-old-in", type=click.IntRange(min=0), default=None, metavar="SECONDS",
              help="older signing secrets stop working after SECONDS (default: they stay valid until revoked)")
def clients_rotate_signing_secret(name: str, expire_old_in: int | None) -> None:
    """Issue a new signing secret for NAME; signatures with either are accepted during the overlap."""
    with _api_clients() as repo:
        secret = repo.rotate_signing_secret(name, load_settings().CLIENT_SIGNING_MASTER_KEY, expire_old_in)
    _echo_signing_secret(secret)
    if expire_old_in is not None:
        click.echo(f"older signing secrets expire in {expire_old_in} s")


# --- end signed requests ---


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
        if c.require_signing:  # signed requests (issue 12): its signing secrets are listed like keys
            status += ",signs"
        for k in c.keys:
            rows.append((c.name, c.id, status, scopes, k.prefix, k.status(now),
                         when(k.created_at), when(k.expires_at), when(k.revoked_at)))
        for k in c.signing_secrets:
            rows.append((c.name, c.id, status, scopes, k.prefix, f"{k.status(now)} (signing)",
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
    from .bootstrap import build_relay
    from .observability import configure_logging
    from .worker import tune_process

    settings = load_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    outbox_relay = build_relay(settings)
    engine = outbox_relay.store.engine
    tune_process()

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


# --- end relay -----------------------------------------------------------------------------


def _add_plugin_commands() -> None:
    """Commands other installed packages add (entry point group `payment_service.commands`): the
    local-parts package adds `sandbox` and `dev` (localparts/commands.py). The product names none of them."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="payment_service.commands"):
        try:
            command = ep.load()
        except ImportError:  # declared by a package that is not importable here
            continue
        main.add_command(command, ep.name)


_add_plugin_commands()
# --- audit trail (issue 12): verify, seal, export, purge ---
main.add_command(audit_cli.audit)


if __name__ == "__main__":
    main()
