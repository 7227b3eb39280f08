"""Alembic, driven from code: `payment-service db upgrade`, /readyz's "migrations at head", tests."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent


def alembic_config(database_url: str | None = None, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        cfg.attributes["database_url"] = database_url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


@functools.cache
def _code_heads() -> frozenset[str]:
    # The code's heads do not change while it runs; reading the scripts costs ~10 ms of one core per
    # /readyz probe otherwise, time in which a gevent worker serves nothing else.
    return frozenset(head_revisions())


def at_head(connection: Connection) -> bool:
    return current_revisions(connection) == _code_heads()


def ensure_sqlite_dir(url: str) -> None:
    """A relative SQLite URL's directory (instance/ for `dev`) exists before the first connection."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
