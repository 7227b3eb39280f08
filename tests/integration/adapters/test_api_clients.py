"""The API clients store on MariaDB (adapters/api_clients.py): the caller owns the transaction, and races on
one client's name or keys have one outcome. Keys, rotation, revocation and the HTTP side are in
tests/integration/test_auth.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from payment_service.adapters.api_clients import SqlAlchemyApiClientRepository
from payment_service.adapters.orm import ApiClientRow, ApiKeyRow
from payment_service.domain.errors import Conflict
from payment_service.domain.events import utcnow
from payment_service.services.api_keys import IssuedKey
from tests.integration.adapters.conftest import THREADS
from tests.integration.adapters.records import race

Sessions = sessionmaker[Session]


def a_name() -> str:
    return f"svc-{uuid.uuid4().hex[:10]}"


def in_transaction(session_factory: Sessions, work: Callable[[SqlAlchemyApiClientRepository], object]) -> object:
    with session_factory() as session, session.begin():
        return work(SqlAlchemyApiClientRepository(session))


def client_count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ApiClientRow).where(ApiClientRow.name == name))
                   .scalar_one())


def test_nothing_is_stored_until_the_caller_commits(engine: Engine, session_factory: Sessions) -> None:
    name = a_name()
    with session_factory() as session:
        issued = SqlAlchemyApiClientRepository(session).create_client(name, ["payments:read"])
        assert client_count(engine, name) == 0  # flushed, not committed: no one else sees it
        session.rollback()
    assert client_count(engine, name) == 0
    with session_factory() as session:
        assert SqlAlchemyApiClientRepository(session).authenticate(issued.key) is None


def test_racing_creations_of_one_name_make_one_client(engine: Engine, session_factory: Sessions) -> None:
    name = a_name()
    results = race(lambda _: in_transaction(session_factory, lambda r: r.create_client(name, ["payments:read"])),
                   THREADS)
    made = [r for r in results if isinstance(r, IssuedKey)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(made) == 1 and len(refused) == THREADS - 1, results
    assert client_count(engine, name) == 1
    with session_factory() as session:
        assert SqlAlchemyApiClientRepository(session).authenticate(made[0].key) is not None


def test_racing_rotations_leave_every_new_key_working_and_the_old_one_expiring(
    session_factory: Sessions, engine: Engine
) -> None:
    name = a_name()
    first = in_transaction(session_factory, lambda r: r.create_client(name, ["payments:read"]))
    assert isinstance(first, IssuedKey)
    results = race(lambda _: in_transaction(session_factory, lambda r: r.rotate(name, expire_old_in=3600)), 4)
    assert all(isinstance(r, IssuedKey) for r in results), results
    with engine.connect() as conn:
        keys = conn.execute(select(ApiKeyRow.prefix, ApiKeyRow.expires_at).where(ApiKeyRow.client_id == first.client_id)
                            ).all()
    assert len(keys) == 5
    expiring = {prefix for prefix, expires_at in keys if expires_at is not None}
    # Rotations take the client's keys FOR UPDATE, so they run one after another: each one set an
    # expiry on every key older than its own, and only the last one issued has none.
    assert first.prefix in expiring and len(expiring) == 4
    with session_factory() as session:
        later = SqlAlchemyApiClientRepository(session, now=lambda: utcnow() + timedelta(hours=2))
        working = [r for r in results if later.authenticate(r.key) is not None]
        assert later.authenticate(first.key) is None and len(working) == 1


def test_a_disabled_client_cannot_be_given_a_key(session_factory: Sessions) -> None:
    name = a_name()
    in_transaction(session_factory, lambda r: r.create_client(name, ["payments:read"]))
    in_transaction(session_factory, lambda r: r.disable(name))
    with pytest.raises(Conflict):
        in_transaction(session_factory, lambda r: r.add_key(name))
