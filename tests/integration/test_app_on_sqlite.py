"""The app's edges that reach the database, on a SQLite file: /readyz names the failing part, /metrics reads
the outbox, and a refused POST is still audited (a row written), so its problem+json is tested here.

Moved out of tests/unit/test_app.py: these open the database, which the unit lane does not.
"""

import pytest

from payment_service.api import create_app
from tests.support.problems import assert_problem


@pytest.fixture
def client(tmp_path):
    app = create_app(DATABASE_URL=f"sqlite:///{tmp_path}/t.sqlite3", TESTING=True)

    @app.post("/_test/echo")
    def echo():
        from payment_service.api.parsing import body

        return {"got": body()}

    return app.test_client()


def test_readyz_names_the_failing_part(client) -> None:
    # The SQLite file exists but has never been migrated.
    resp = client.get("/readyz")
    body = assert_problem(resp, 503, "not_ready")
    assert body["errors"] == [
        {"field": "database", "message": "migrations not at head (run `payment-service db upgrade`)"}
    ]
    assert resp.headers["Retry-After"]


def test_metrics_are_prometheus(client) -> None:
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="/healthz",method="GET",status="200"}' in text


def test_malformed_json_is_problem(client) -> None:
    assert_problem(client.post("/_test/echo", data="{nope", content_type="application/json"), 400, "malformed_json")


def test_non_json_is_problem(client) -> None:
    assert_problem(client.post("/_test/echo", data="a=b"), 415, "unsupported_media_type")


def test_card_number_in_body_refused_without_echo(client) -> None:
    resp = client.post("/_test/echo", json={"note": "4242 4242 4242 4242"})
    body = assert_problem(resp, 422, "card_data_not_accepted")
    assert "4242" not in resp.get_data(as_text=True)
    assert body["errors"][0]["field"] == "note"
