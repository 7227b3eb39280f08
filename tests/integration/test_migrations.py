"""The models and the migrations agree, on MariaDB and on SQLite; downgrade works."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from payment_service.adapters import migrate
from payment_service.adapters.orm import Base

EXPECTED_TABLES = {
    "payments", "payment_methods", "withdrawal_requests", "refunds", "gateway_events", "outbox_events",
    "idempotency_keys", "api_clients", "api_keys", "gateway_customers", "relay_leases",
    "audit_events", "audit_chain", "api_signing_secrets", "request_signatures",
    "reconcile_runs",  # settlement reconciliation (0005)
}


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.fixture(params=["mariadb", "sqlite"])
def empty_db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.sqlite3"
    return request.getfixturevalue("fresh_database_url")


def test_upgrade_matches_models_and_downgrade_works(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    assert _tables(empty_db_url) == EXPECTED_TABLES
    assert _diff(empty_db_url) == []
    engine = create_engine(empty_db_url)
    with engine.connect() as conn:
        assert migrate.at_head(conn)
    engine.dispose()

    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()
    migrate.upgrade(empty_db_url)
    assert _diff(empty_db_url) == []


def test_constraints_the_contract_relies_on(fresh_database_url: str) -> None:
    migrate.upgrade(fresh_database_url)
    engine = create_engine(fresh_database_url)
    insp = inspect(engine)
    uniques = {t: {tuple(u["column_names"]) for u in insp.get_unique_constraints(t)} for t in EXPECTED_TABLES}
    assert ("gateway", "gateway_event_id") in uniques["gateway_events"]
    assert ("caller", "key") in uniques["idempotency_keys"]
    assert ("event_id",) in uniques["outbox_events"]
    indexes = {t: {tuple(i["column_names"]) for i in insp.get_indexes(t)} for t in EXPECTED_TABLES}
    assert ("published_at", "id") in indexes["outbox_events"]  # outbox claim
    # Every sweep (expiry of PENDING_3DS, reconciliation of PENDING, refunds, payouts) claims by due time.
    for table in ("payments", "refunds", "withdrawal_requests"):
        assert ("status", "next_attempt_at") in indexes[table]
    assert ("user_id", "created_at", "id") in indexes["payments"]  # listing, velocity
    engine.dispose()


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_0003_hashes_stored_idempotency_keys(backend: str, request: pytest.FixtureRequest, tmp_path) -> None:
    """Keys stored as sent before 0003 become their SHA-256, as the service now looks them up."""
    import hashlib

    from sqlalchemy import text

    if backend == "mariadb":
        from localparts.mariadb import create_database_at, drop_database_at

        server_url = request.getfixturevalue("database_url")
        name = f"t_keys_{uuid.uuid4().hex[:12]}"
        url = create_database_at(server_url, name)
    else:
        url = f"sqlite:///{tmp_path}/k.db"
    migrate.upgrade(url, "0002")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO idempotency_keys (caller, `key`, method, path, request_hash, status, created_at, "
                "expires_at) VALUES ('user:u_m', 'retry-me-1', 'POST', '/payments/topup', 'h', 'IN_PROGRESS', "
                "'2026-12-01 10:00:00', '2026-12-02 10:00:00')".replace("`", "" if backend == "sqlite" else "`")
            ))
        migrate.upgrade(url)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT caller, recovery_point FROM idempotency_keys")).all()
            keys = [r[0] for r in conn.execute(text("SELECT " + ("`key`" if backend == "mariadb" else '"key"')
                                                    + " FROM idempotency_keys"))]
        assert keys == [hashlib.sha256(b"retry-me-1").hexdigest()]
        assert stored == [("user:u_m", "STARTED")]
    finally:
        engine.dispose()
        if backend == "mariadb":
            drop_database_at(server_url, name)
