"""The audit trail on MariaDB: rows in the same transaction as a move, the sealer under concurrent
writers, `audit verify` naming the row after an edit, a delete and a swap; export and purge; the
CLI's client operations and signing secrets (never a key or a secret in a row).

Each test has its own database: verify walks the whole chain.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from config.settings import DEV_AUDIT_HMAC_KEY
from payment_service.adapters import migrate
from payment_service.adapters.audit_store import SqlAuditLog, SqlAuditStore
from payment_service.adapters.orm import AuditEventRow
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.bootstrap import make_engine
from payment_service.cli import main
from payment_service.domain import audit, ids
from payment_service.domain.events import utcnow
from payment_service.domain.lifecycle import PAYMENTS
from payment_service.domain.payments import Payment
from payment_service.services import audit as audit_service

pytestmark = pytest.mark.integration

KEY = DEV_AUDIT_HMAC_KEY.encode()


@pytest.fixture
def db_url(database_url: str) -> Iterator[str]:
    # A database of its own per test (verify walks the whole table).
    engine = make_engine(database_url)
    name = f"a_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    url = database_url.rsplit("/", 1)[0] + "/" + name + "?" + database_url.split("?", 1)[1]
    migrate.upgrade(url)
    yield url
    engine = make_engine(database_url)
    with engine.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name}"))
    engine.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _payment(status: str = "PENDING") -> Payment:
    now = utcnow()
    return Payment(id=ids.new_id(ids.PAYMENT), user_id="u_1", amount=1000, currency="INR", gateway="stripe",
                   status=status, created_at=now, updated_at=now)


def _write(engine: Engine, n: int, label: str = "row") -> None:
    with Session(engine) as session:
        log = SqlAuditLog(session)
        for i in range(n):
            log.add(audit.event(utcnow(), "payment.captured", audit.SUCCEEDED, f"{label} {i}",
                                resource_type="payment", resource_id=f"pay_{label}_{i}"))
        session.commit()


def _ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEventRow.id).order_by(AuditEventRow.seq)).scalars())


def _verify_cli(db_url: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    result = CliRunner().invoke(main, ["audit", "verify"])
    return result.exit_code, result.output


def test_a_move_writes_its_row_in_its_own_transaction(engine: Engine) -> None:
    sessions = sessionmaker(engine, expire_on_commit=False)

    def factory() -> SqlAlchemyUnitOfWork:
        return SqlAlchemyUnitOfWork(sessions)

    payment = _payment()
    with factory() as uow:
        uow.payments.add(payment)
        uow.commit()
    with audit.acting_as(audit.Actor("client", "cli_x", "psk_abcdefgh"), "req_9", "10.0.0.1"):
        with factory() as uow:  # rolled back: neither the move nor its row
            assert uow.records.move(PAYMENTS.move(payment, "CAPTURED", utcnow()))
        with factory() as uow:
            assert uow.records.move(PAYMENTS.move(payment, "CAPTURED", utcnow()))
            uow.commit()
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEventRow).where(AuditEventRow.resource_id == payment.id)).all()
    assert [(r.actor, r.actor_key_prefix, r.action, r.request_id, r.source) for r in rows] == [
        ("client:cli_x", "psk_abcdefgh", "payment.captured", "req_9", "10.0.0.1")]


def test_concurrent_writers_and_sealers_make_one_well_ordered_chain(engine: Engine) -> None:
    store = SqlAuditStore(engine)
    writers, per_writer = 8, 40
    barrier = threading.Barrier(writers + 2)
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                _write(engine, 1, f"w{w}-{i}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def seal() -> None:
        try:
            barrier.wait()
            for _ in range(30):
                audit_service.seal_pending(store, KEY, batch=7)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=seal) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    report = audit_service.verify(store, KEY)
    assert report.ok, report.problem
    assert report.checked == writers * per_writer and report.unsealed == 0
    with engine.connect() as conn:
        seqs = list(conn.execute(select(AuditEventRow.seq).order_by(AuditEventRow.seq)).scalars())
    assert seqs == list(range(1, writers * per_writer + 1))


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_verify_names_the_row_after_an_edit_a_delete_or_a_swap(
    tamper: str, db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(engine, 20)
    code, out = _verify_cli(db_url, monkeypatch)
    assert code == 0 and "20 row(s) verified" in out, out
    ids_ = _ids(engine)
    victim, other = ids_[7], ids_[8]
    with engine.begin() as conn:
        if tamper == "edit":
            conn.execute(text("UPDATE audit_events SET actor = 'user:someone_else' WHERE id = :i"), {"i": victim})
        elif tamper == "delete":
            conn.execute(text("DELETE FROM audit_events WHERE id = :i"), {"i": victim})
        else:
            conn.execute(text("UPDATE audit_events SET seq = -seq WHERE id IN (:a, :b)"), {"a": victim, "b": other})
            conn.execute(text("UPDATE audit_events SET seq = CASE id WHEN :a THEN 9 WHEN :b THEN 8 END "
                              "WHERE id IN (:a, :b)"), {"a": victim, "b": other})
    code, out = _verify_cli(db_url, monkeypatch)
    assert code == 1, out
    expected = {"edit": f"row {victim} (seq 8) was changed", "delete": f"missing before row {other}",
                "swap": f"row {other} (seq 8) is out of place"}[tamper]
    assert expected in out, out


def test_export_then_purge_keeps_the_chain_verifiable_and_records_itself(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("PAYMENT_SERVICE_OPERATOR", "ops-anna")
    _write(engine, 10, "old")
    runner = CliRunner()
    assert runner.invoke(main, ["audit", "seal"]).exit_code == 0
    cutoff = utcnow()
    _write(engine, 5, "new")
    out = tmp_path / "audit.jsonl"
    exported = runner.invoke(main, ["audit", "export", "--until", cutoff.isoformat(), "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 10 and all(x["hash"] and x["seq"] for x in lines)
    purged = runner.invoke(main, ["audit", "purge", "--before", cutoff.isoformat(), "--yes"])
    assert purged.exit_code == 0 and "purged 10 row(s)" in purged.output, purged.output
    code, verified = _verify_cli(db_url, monkeypatch)
    assert code == 0 and "6 row(s) verified" in verified, verified  # 5 new + the purge's row
    with engine.connect() as conn:
        row = conn.execute(select(AuditEventRow).where(AuditEventRow.action == "audit.purge")).one()
    assert row.actor == "cli:ops-anna" and "purged 10" in row.summary


_SECRET_RE = re.compile(r"pss_[A-Za-z0-9_-]{43}")
_KEY_RE = re.compile(r"psk_[A-Za-z0-9_-]{43}")


def test_cli_client_operations_are_audited_without_keys_or_secrets(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("PAYMENT_SERVICE_OPERATOR", "ops-bo")
    runner = CliRunner()
    name = f"signer-{uuid.uuid4().hex[:6]}"
    created = runner.invoke(main, ["clients", "create", name, "--scope", "payments:refund", "--require-signing"])
    assert created.exit_code == 0, created.output
    (key,) = _KEY_RE.findall(created.output)
    (secret,) = _SECRET_RE.findall(created.output)
    rotated = runner.invoke(main, ["clients", "rotate-signing-secret", name, "--expire-old-in", "60"])
    (secret2,) = _SECRET_RE.findall(rotated.output)
    listed = runner.invoke(main, ["clients", "list"]).output
    assert secret[:12] in listed and secret2[:12] in listed and "(signing)" in listed and ",signs" in listed
    assert secret not in listed and secret2 not in listed
    runner.invoke(main, ["clients", "rotate", name])
    runner.invoke(main, ["clients", "revoke", name, "--key-prefix", key[:12]])
    runner.invoke(main, ["clients", "require-signing", name, "--off"])
    runner.invoke(main, ["clients", "disable", name])
    with engine.connect() as conn:
        rows = conn.execute(select(AuditEventRow).order_by(AuditEventRow.id)).all()
        everything = " ".join(str(v) for r in rows for v in r) + " ".join(
            str(v) for r in conn.execute(text("SELECT * FROM api_signing_secrets")).all() for v in r)
    actions = [r.action for r in rows]
    assert actions == ["client.create", "client.key.issue", "client.signing.require", "client.signing.rotate",
                       "client.key.issue", "client.key.revoke", "client.signing.unrequire", "client.disable"]
    assert {r.actor for r in rows} == {"cli:ops-bo"}
    for s in (key, secret, secret2):
        assert s not in everything and s[4:] not in everything
    assert key[:12] in everything  # the display prefix is how an operator tells keys apart


def test_an_untouched_chain_survives_a_rewritten_row_only_with_the_key(engine: Engine) -> None:
    store = SqlAuditStore(engine)
    _write(engine, 3)
    audit_service.seal_pending(store, KEY)
    head = store.head()
    rows = list(store.sealed(0, head.last_seq))
    # Someone with the database but without AUDIT_HMAC_KEY rewrites a row and recomputes its hash
    # with a guessed key: still caught.
    forged = replace(rows[1], summary="forged")
    forged_hash = audit.chain_hash(b"guess" * 8, forged.prev_hash or "", forged)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET summary = 'forged', hash = :h WHERE id = :i"),
                     {"h": forged_hash, "i": rows[1].id})
    report = audit_service.verify(store, KEY)
    assert not report.ok and report.row_id == rows[1].id
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditEventRow)).scalar_one() == 3


def test_the_hourly_purge_forgets_spent_signatures_and_records_itself(db_url: str, engine: Engine) -> None:
    from config import load_settings
    from payment_service.adapters.orm import RequestSignatureRow
    from payment_service.bootstrap import bootstrap
    from payment_service.worker import jobs

    with engine.begin() as conn:
        conn.execute(RequestSignatureRow.__table__.insert(), [  # type: ignore[attr-defined]
            {"signature_hash": "a" * 64, "client_id": "cli_x", "expires_at": utcnow() - timedelta(seconds=1)},
            {"signature_hash": "b" * 64, "client_id": "cli_x", "expires_at": utcnow() + timedelta(seconds=300)},
        ])
    container = bootstrap(load_settings(DATABASE_URL=db_url))
    try:
        assert jobs.purge(container)["request_signatures"] == 1
    finally:
        container.close()
    with engine.connect() as conn:
        left = conn.execute(select(RequestSignatureRow.signature_hash)).scalars().all()
        row = conn.execute(select(AuditEventRow).where(AuditEventRow.action == "retention.purge")).one()
    assert left == ["b" * 64]
    assert row.actor == "job:purge" and "1 request_signatures" in row.summary
