"""Errors the API gives for what the database cannot or must not see, on MariaDB.

An id that cannot be ours (non-ASCII, too long, the wrong prefix) is a record that does not exist:
404 before any query. Only a database that cannot serve now is a 503; any other database error is
a bug and answers 500 (found by fuzzing: `GET /payments/pay_é` answered 503 `database_unavailable`
because MariaDB refused the collation mix, and every database error was reported as an outage).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from payment_service.adapters import migrate
from payment_service.api import create_app
from payment_service.api.context import container
from payment_service.domain import ids

pytestmark = pytest.mark.integration

SECRET = "test-jwt-secret-0123456789abcdef-0123456789"
AUDIENCE = "payment-service-test"
BAD_IDS = ["pay_é", "ünïcode", "pay_" + "0" * 300, "' OR 1=1 --", "pay_ABCDEFGHIJKLMNOPQRSTUVWXYZ", "re_01"]


def _settings(db_url: str) -> dict[str, Any]:
    return {"DATABASE_URL": db_url, "TESTING": True, "JWT_SECRET": SECRET, "JWT_AUDIENCE": AUDIENCE}


def _user_headers() -> dict[str, str]:
    token = jwt.encode({"sub": f"u_{uuid.uuid4().hex[:8]}", "aud": AUDIENCE, "exp": int(time.time()) + 600},
                       SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def app(fresh_database_url: str) -> Iterator[Flask]:
    migrate.upgrade(fresh_database_url)
    flask_app = create_app(**_settings(fresh_database_url))

    @flask_app.get("/_test/bad-sql")
    def bad_sql() -> dict[str, Any]:
        with container().session_factory() as session:
            session.execute(text("SELECT no_such_column FROM payments"))
        return {}

    yield flask_app
    container_of(flask_app).close()


def container_of(flask_app: Flask) -> Any:
    return flask_app.extensions["payment_service"]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _paths(bad: str) -> list[tuple[str, str]]:
    good_payment = ids.new_id(ids.PAYMENT)
    return [
        ("GET", f"/payments/{bad}"),
        ("GET", f"/payments/{bad}/refunds"),
        ("GET", f"/payments/{bad}/refunds/{ids.new_id(ids.REFUND)}"),
        ("GET", f"/payments/{good_payment}/refunds/{bad}"),
        ("DELETE", f"/payment-methods/{bad}"),
        ("GET", f"/withdrawals/{bad}"),
    ]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_id_that_cannot_be_ours_is_404_before_any_query(client: FlaskClient, bad: str) -> None:
    for method, path in _paths(bad):
        resp = client.open(path, method=method, headers=_user_headers())
        assert resp.status_code == 404, (method, path, resp.status_code, resp.get_data(as_text=True))
        assert resp.mimetype == "application/problem+json"
        assert resp.get_json()["code"] == "not_found"


def test_a_well_formed_unknown_id_is_looked_up_and_not_found(client: FlaskClient) -> None:
    resp = client.get(f"/payments/{ids.new_id(ids.PAYMENT)}", headers=_user_headers())
    assert resp.status_code == 404
    assert "not found" in resp.get_json()["detail"]


def test_a_database_error_that_is_not_an_outage_is_a_500(client: FlaskClient) -> None:
    resp = client.get("/_test/bad-sql")
    assert resp.status_code == 500
    body = resp.get_json()
    assert body["code"] == "internal_error"
    assert "no_such_column" not in resp.get_data(as_text=True)  # no SQL or driver text leaks


def test_a_database_that_cannot_be_reached_is_a_fast_503() -> None:
    # A port nothing listens on: the driver's "can't connect" (2003), the outage case.
    from gateway_sandbox.server import free_port

    url = f"mysql+pymysql://root@127.0.0.1:{free_port()}/nothing"
    down = create_app(**_settings(url), DB_POOL_TIMEOUT_SECONDS=2)
    t0 = time.monotonic()
    resp = down.test_client().get(f"/payments/{ids.new_id(ids.PAYMENT)}", headers=_user_headers())
    assert resp.status_code == 503
    assert resp.get_json()["code"] == "database_unavailable"
    assert resp.headers["Retry-After"] == "1"
    assert time.monotonic() - t0 < 30
    container_of(down).close()
