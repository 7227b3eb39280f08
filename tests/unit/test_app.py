"""The app's edges without a database server: problem+json everywhere, request ids, OpenAPI coverage."""

import io
import json
import logging
import re

import pytest

from payment_service.api import create_app
from payment_service.api.openapi import spec
from payment_service.observability import configure_logging
from tests.support.problems import assert_problem


@pytest.fixture
def app(tmp_path):
    app = create_app(DATABASE_URL=f"sqlite:///{tmp_path}/t.sqlite3", TESTING=True)

    @app.post("/_test/echo")
    def echo():
        from payment_service.api.parsing import body

        return {"got": body()}

    @app.get("/_test/crash")
    def crash():
        raise RuntimeError("secret internals 4242424242424242")

    @app.get("/_test/missing/<thing>")
    def missing(thing):
        from payment_service.domain.errors import NotFound

        raise NotFound(f"thing {thing} not found", field=f"path {thing}")

    return app


@pytest.fixture
def client(app):
    return app.test_client()


def test_unknown_route_is_problem(client) -> None:
    assert_problem(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_problem(client) -> None:
    resp = client.delete("/healthz")
    assert_problem(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]


def test_unhandled_error_has_no_stack_trace(client, caplog) -> None:
    resp = client.get("/_test/crash")
    body = assert_problem(resp, 500, "internal_error")
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text and "secret internals" not in text and body["detail"]


def test_request_id_generated_or_echoed(client) -> None:
    assert re.match(r"^req_[0-9a-f]{24}$", client.get("/healthz").headers["X-Request-Id"])
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    bad = client.get("/healthz", headers={"X-Request-Id": "<script>"}).headers["X-Request-Id"]
    assert bad.startswith("req_")


PAN = "4242424242424242"  # Stripe's public test number


@pytest.mark.parametrize(
    "incoming", [PAN, "4242-4242-4242-4242", "4242.4242.4242.4242", "req:4242424242424242", "4242424242424242_x"]
)
def test_request_id_that_looks_like_a_card_number_is_replaced(client, incoming: str) -> None:
    rid = client.get("/healthz", headers={"X-Request-Id": incoming}).headers["X-Request-Id"]
    assert re.match(r"^req_[0-9a-f]{24}$", rid)


def test_problem_details_never_echo_a_card_number(client) -> None:
    resp = client.get(f"/_test/missing/{PAN}")
    body = assert_problem(resp, 404, "not_found")
    assert PAN not in resp.get_data(as_text=True)
    assert body["detail"] == "thing [card ****4242] not found"
    assert body["errors"] == [{"field": "path [card ****4242]", "message": "thing [card ****4242] not found"}]


def test_no_card_number_in_log_lines_from_request_id_path_or_query(app) -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "json", stream=stream)
    try:
        client = app.test_client()
        client.get(f"/healthz?card={PAN}", headers={"X-Request-Id": PAN, "User-Agent": PAN})
        client.get(f"/payments/{PAN}", headers={"X-Request-Id": f"id-{PAN}"})
        client.get(f"/no/such/{PAN}/route?q={PAN}")
        client.get("/_test/crash", headers={"X-Request-Id": "4242 4242 4242 4242"})
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert PAN not in text and "4242 4242 4242 4242" not in text
    records = [json.loads(line) for line in text.splitlines()]
    requests = [r for r in records if r["message"] == "request"]
    assert len(requests) == 4 and all(r["request_id"].startswith("req_") for r in requests)
    assert requests[1]["path"] == "/payments/[card ****4242]"


def test_docs_page_and_assets_are_local(client) -> None:
    page = client.get("/docs").get_data(as_text=True)
    assert "/openapi.json" in page and "swagger-ui-bundle.js" in page
    asset = client.get("/docs/static/js/swagger-ui-bundle.js")
    assert asset.status_code == 200
    asset.close()


def _flask_paths(app) -> set[str]:
    paths = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith(("/_test", "/docs/static")):
            continue
        paths.add(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
    return paths


def test_openapi_documents_every_route_and_only_those(app, client) -> None:
    doc = client.get("/openapi.json").get_json()
    assert doc == spec()
    assert doc["openapi"].startswith("3.1")
    assert _flask_paths(app) == set(doc["paths"])
    for path, ops in doc["paths"].items():
        for method in ops:
            rules = [r for r in app.url_map.iter_rules() if re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", r.rule) == path]
            assert any(method.upper() in r.methods for r in rules), (path, method)


def test_openapi_says_which_operations_a_signing_client_signs(client) -> None:
    """docs/auth.md "Signed requests": a client set to sign sends X-Signature with X-API-Key on every
    mutation; the document lists that pair beside X-API-Key alone, and only where a client may call."""
    from payment_service.services.api_keys import SIGNED_METHODS

    doc = client.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["requestSignature"]["name"] == "X-Signature"
    signed = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            security = op.get("security", [])
            pair = {"apiKey": [], "requestSignature": []} in security
            assert pair == (method.upper() in SIGNED_METHODS and {"apiKey": []} in security), (method, path)
            assert security.count({"apiKey": [], "requestSignature": []}) <= 1
            if pair:
                signed.add(f"{method.upper()} {path}")
    assert {"POST /payments/{payment_id}/refunds", "POST /withdrawals"} <= signed
