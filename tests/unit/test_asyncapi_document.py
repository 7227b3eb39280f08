"""The AsyncAPI 3.0 document of payment.events: valid AsyncAPI, true to the events the domain builds, served.

The events here are built by the same functions the services use (domain/lifecycle.py) and serialized
by the outbox writer, so a field added to an event without the document fails here first.
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from config import load_settings
from localparts.topic_reader import Record, TopicReader
from payment_service.domain import lifecycle
from payment_service.domain.events import EventType
from payment_service.events import asyncapi_bytes, asyncapi_document
from payment_service.events.contract import CHANNEL, ContractViolation, EventContract
from tests.support.event_contract import AT, as_message, check_event_record, domain_events, sample_payment

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_SCHEMA = ROOT / "tests" / "support" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi_document()


@pytest.fixture(scope="module")
def contract() -> EventContract:
    return EventContract()


# --- the document itself ---------------------------------------------------------------------


def test_is_a_valid_asyncapi_3_document(doc: dict[str, Any]) -> None:
    official = json.loads(OFFICIAL_SCHEMA.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in Draft7Validator(official).iter_errors(doc)]
    assert errors == []
    assert doc["asyncapi"] == "3.0.0"


def test_the_official_schema_refuses_what_asyncapi_3_does_not_allow(doc: dict[str, Any]) -> None:
    # The check is not vacuous: AsyncAPI 2's "publish" is not an action of 3.0, nor is a channel without messages.
    official = Draft7Validator(json.loads(OFFICIAL_SCHEMA.read_text()))
    broken = json.loads(json.dumps(doc))
    broken["operations"]["publishPaymentEvents"]["action"] = "publish"
    assert not official.is_valid(broken)
    broken = json.loads(json.dumps(doc))
    broken["asyncapi"] = "2.6.0"
    assert not official.is_valid(broken)


def _walk(node: Any, path: str = "#") -> list[tuple[str, Any]]:
    out = [(path, node)]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _walk(v, f"{path}/{i}")
    return out


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_and_every_schema_is_json_schema(doc: dict[str, Any]) -> None:
    refs = [n["$ref"] for _, n in _walk(doc) if isinstance(n, dict) and "$ref" in n]
    assert refs
    for ref in refs:
        _resolve(doc, ref)  # KeyError names a dangling one
    schemas = list(doc["components"]["schemas"].values())
    for message in doc["components"]["messages"].values():
        schemas += [message["headers"], message["payload"], message["bindings"]["kafka"]["key"]]
    for schema in schemas:
        Draft7Validator.check_schema(schema)


def test_one_message_per_event_type_on_one_channel_one_operation(doc: dict[str, Any]) -> None:
    types = [t.value for t in EventType]
    channel = doc["channels"][CHANNEL]
    assert channel["address"] == load_settings(env={}).EVENTS_TOPIC == "payment.events"
    assert list(channel["messages"]) == types
    assert list(doc["components"]["messages"]) == types
    assert all(doc["components"]["messages"][t]["name"] == t for t in types)
    (operation,) = doc["operations"].values()
    assert operation["action"] == "send" and operation["channel"] == {"$ref": f"#/channels/{CHANNEL}"}
    assert [m["$ref"] for m in operation["messages"]] == [f"#/channels/{CHANNEL}/messages/{t}" for t in types]


def test_headers_and_key_are_those_the_relay_sends(doc: dict[str, Any]) -> None:
    headers = doc["components"]["schemas"]["EventHeaders"]
    assert set(headers["required"]) == set(headers["properties"]) == {
        "event_id", "event_type", "signature", "signature_key_id", "content-type"}
    relay_source = (ROOT / "payment_service" / "adapters" / "kafka_publisher.py").read_text()
    for name in headers["properties"]:
        assert f'("{name}", ' in relay_source, f"the relay does not send header {name}"
    for message in doc["components"]["messages"].values():
        assert message["contentType"] == "application/cloudevents+json"
        assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_canonical_amount_fields_are_optional_and_nullable_in_every_data_schema(doc: dict[str, Any]) -> None:
    for name, schema in doc["components"]["schemas"].items():
        if not name.endswith("Data"):
            continue
        props = schema["properties"]
        assert props["canonical_amount"]["type"] == ["integer", "null"], name
        assert props["canonical_currency"]["type"] == ["string", "null"], name
        assert not {"canonical_amount", "canonical_currency"} & set(schema["required"]), name


def test_examples_match_their_schemas_and_their_signatures_verify(doc: dict[str, Any], contract: EventContract) -> None:
    for name, message in doc["components"]["messages"].items():
        (example,) = message["examples"]
        value = json.dumps(example["payload"], separators=(",", ":")).encode()
        assert contract.problems(example["payload"]["data"]["user_id"], example["headers"], value) == [], name
        expected = hmac.new(b"example-key", value, hashlib.sha256).hexdigest()
        assert example["headers"]["signature"] == expected, name


def test_the_file_is_package_data() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "events/asyncapi.json" in cfg["options.package_data"]["payment_service"]
    assert asyncapi_bytes() == (ROOT / "payment_service" / "events" / "asyncapi.json").read_bytes()


# --- the events the domain builds ------------------------------------------------------------


def test_every_event_the_domain_builds_matches(contract: EventContract) -> None:
    events = domain_events()
    assert {e.type for e in events} == set(EventType)
    for event in events:
        assert contract.problems(*as_message(event)) == [], event.type


def test_data_schemas_list_exactly_what_the_domain_sends(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for event in domain_events():
        name = doc["components"]["messages"][event.type.value]["payload"]["$ref"].rsplit("/", 1)[1]
        data_schema = _resolve(doc, schemas[name]["allOf"][1]["properties"]["data"]["$ref"])
        sent = set(event.data)
        assert set(data_schema["required"]) <= sent, (event.type, set(data_schema["required"]) - sent)
        optional = set(data_schema["properties"]) - set(data_schema["required"])
        assert optional <= {"canonical_amount", "canonical_currency"}, (event.type, optional)


@pytest.mark.parametrize("canonical", [{"canonical_amount": 592, "canonical_currency": "USD"},
                                       {"canonical_amount": None, "canonical_currency": None}])
def test_events_with_canonical_amounts_match(contract: EventContract, canonical: dict[str, Any]) -> None:
    for event in domain_events():
        assert contract.problems(*as_message(event, {**event.data, **canonical})) == [], event.type


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("currency"), "'currency' is a required property"),
        (lambda d: d.update(note="new field"), "Additional properties are not allowed"),
        (lambda d: d.update(amount="50000"), "is not of type 'integer'"),
        (lambda d: d.update(amount=0), "is less than the minimum"),
        (lambda d: d.update(currency="inr"), "does not match"),
        (lambda d: d.update(gateway="paypal"), "is not one of"),
        (lambda d: d.update(captured_at="2026-11-21 10:00"), "does not match"),
        (lambda d: d.update(canonical_amount=1.5), "is not of type"),
        (lambda d: d.update(user_id="u_other"), "key differs from data.user_id"),
        (lambda d: d.update(payment_id="pay_other"), "subject differs"),
    ],
)
def test_a_wrong_event_is_caught(contract: EventContract, change: Any, expected: str) -> None:
    event = lifecycle.payment_captured_event(sample_payment(), AT)
    data = dict(event.data)
    change(data)
    problems = contract.problems(*as_message(event, data))
    assert any(expected in p for p in problems), problems


def test_wrong_headers_and_values_are_caught(contract: EventContract) -> None:
    key, headers, value = as_message(lifecycle.payment_captured_event(sample_payment(), AT))
    assert any("event_type" in p for p in contract.problems(key, [*headers[:1], ("event_type", b"PAYMENT_FAILED"),
                                                                  *headers[2:]], value))
    assert any("'signature' is a required" in p for p in contract.problems(key, headers[:2] + headers[3:], value))
    assert any("more than once" in p for p in contract.problems(key, [*headers, headers[0]], value))
    assert contract.problems(key, headers, b"{not json") == ["value is not JSON (JSONDecodeError)"]
    lost = b'{"type": "PAYMENT_LOST"}'
    assert any("'PAYMENT_LOST' is not one of" in p for p in contract.problems(key, headers, lost))
    assert any("unknown event type" in p for p in contract.problems(key, [], lost))
    doc = json.loads(value)
    doc["specversion"] = "0.3"
    assert any("specversion" in p for p in contract.problems(key, headers, json.dumps(doc).encode()))


def test_the_topic_reader_hook_is_installed_and_fails_a_wrong_record(contract: EventContract) -> None:
    assert check_event_record in TopicReader.record_checks
    key, headers, value = as_message(lifecycle.payment_captured_event(sample_payment(), AT))
    good = Record("payment.events.t", 0, 7, key, value, list(headers))
    check_event_record(good)
    bad = Record("payment.events.t", 0, 8, key, value.replace(b'"currency":"INR",', b""), list(headers))
    with pytest.raises(ContractViolation, match=r"(?s)payment.events.t\[0\]@8 .*'currency' is a required property"):
        check_event_record(bad)
    check_event_record(Record("test.roundtrip.x", 0, 1, None, b"not an event"))  # other topics are not events


# --- served ----------------------------------------------------------------------------------


def test_served_at_asyncapi_json_without_credentials(tmp_path: Path) -> None:
    from payment_service.api import create_app
    from payment_service.api.openapi import spec

    app = create_app(DATABASE_URL=f"sqlite:///{tmp_path}/t.sqlite3", TESTING=True)
    client = app.test_client()
    resp = client.get("/asyncapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_data() == asyncapi_bytes()
    # A bad credential does not matter on a public document (like /openapi.json).
    assert client.get("/asyncapi.json", headers={"Authorization": "Bearer nonsense"}).status_code == 200
    assert "/asyncapi.json" in spec()["paths"]
