"""The `payment-service audit` commands: verify, seal, export, purge (added to the command in cli.py).

An operator's command acts as `cli:<operator>`: PAYMENT_SERVICE_OPERATOR if set, else the OS user.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click

from config import load_settings


def cli_actor() -> Any:
    from .domain import audit

    try:
        who = os.environ.get("PAYMENT_SERVICE_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        who = f"uid-{os.getuid()}"
    return audit.Actor("cli", who)


class _When(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z or 2026-12-01)", param, ctx)
        return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


WHEN = _When()


def _store() -> tuple[Any, Any, bytes]:
    from .bootstrap import bootstrap

    settings = load_settings()
    container = bootstrap(settings, pool_size=1)
    return container, container.audit_store(), settings.AUDIT_HMAC_KEY.encode()


@click.group()
def audit() -> None:
    """The audit trail: verify its HMAC chain, export it, purge old rows (docs/audit.md)."""


@audit.command("verify")
@click.option("--no-seal", is_flag=True, help="do not chain rows still waiting for the sealer first")
def audit_verify(no_seal: bool) -> None:
    """Walk the chain; name the first row changed, removed or out of place. Exit 1 if there is one."""
    from .services import audit as audit_service

    container, store, key = _store()
    try:
        started = time.perf_counter()
        report = audit_service.verify(store, key, seal_first=not no_seal)
        took = time.perf_counter() - started
    finally:
        container.close()
    if report.ok:
        click.echo(f"audit chain intact: {report.checked} row(s) verified in {took:.2f} s"
                   + (f"; {report.unsealed} row(s) not sealed yet" if report.unsealed else ""))
        return
    click.echo(f"audit chain BROKEN after {report.checked} good row(s): {report.problem}", err=True)
    sys.exit(1)


@audit.command("seal")
def audit_seal() -> None:
    """Chain the rows written since the worker last did (it does so every AUDIT_SEAL_INTERVAL_SECONDS)."""
    from .domain.audit import ChainHeadTampered
    from .services import audit as audit_service

    container, store, key = _store()
    try:
        n = audit_service.seal_pending(store, key)
    except ChainHeadTampered as exc:
        raise click.ClickException(f"{exc}: run `payment-service audit verify`; nothing was sealed") from None
    finally:
        container.close()
    click.echo(f"sealed {n} row(s)")


@audit.command("export")
@click.option("--since", type=WHEN, default=None, help="rows at or after this time (RFC 3339)")
@click.option("--until", type=WHEN, default=None, help="rows before this time (RFC 3339)")
@click.option("--output", "-o", type=click.File("w"), default="-", help="a file (default: standard output)")
def audit_export(since: datetime | None, until: datetime | None, output: Any) -> None:
    """Rows as JSON lines, oldest first, with their chain fields (seq, prev_hash, hash)."""
    from .api.audit import event_json

    container, store, _key = _store()
    n = 0
    try:
        for e in store.between(since, until):
            item = event_json(e)
            item["prev_hash"] = e.prev_hash
            output.write(json.dumps(item, separators=(",", ":")) + "\n")
            n += 1
    finally:
        container.close()
    click.echo(f"exported {n} row(s)", err=True)


@audit.command("purge")
@click.option("--before", type=WHEN, required=True, help="remove rows older than this (export them first)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def audit_purge(before: datetime, yes: bool) -> None:
    """Remove the chain's rows older than --before; the chain stays verifiable from the first row kept,
    and the purge is recorded as a row of its own."""
    from .domain import audit as audit_domain
    from .domain.events import utcnow
    from .services import audit as audit_service

    if not yes:
        click.confirm(f"remove audit rows older than {before.isoformat()}? (export them first)", abort=True)
    container, store, key = _store()
    try:
        with audit_domain.acting_as(cli_actor()):
            report = audit_service.purge(store, key, before, utcnow())
    except audit_domain.ChainHeadTampered as exc:
        raise click.ClickException(f"{exc}: run `payment-service audit verify`; nothing was purged") from None
    finally:
        container.close()
    click.echo(f"purged {report.removed} row(s); the chain now starts after seq {report.anchor_seq}")
