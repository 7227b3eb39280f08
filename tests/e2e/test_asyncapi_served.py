"""`GET /asyncapi.json` from the running service (gunicorn): public, the package's document, usable as is."""

from __future__ import annotations

import json

import requests

from payment_service.events import asyncapi_bytes
from payment_service.events.contract import EventContract


def test_the_running_service_serves_the_events_document(api_url: str) -> None:
    resp = requests.get(api_url + "/asyncapi.json", timeout=10)  # no credential
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/json")
    assert resp.content == asyncapi_bytes()
    doc = resp.json()
    assert doc["asyncapi"] == "3.0.0" and doc["channels"]["paymentEvents"]["address"] == "payment.events"
    # What a consumer does with it: check a message against the document it fetched.
    contract = EventContract(document=doc)
    example = doc["components"]["messages"]["WITHDRAWAL_REVERSED"]["examples"][0]
    value = json.dumps(example["payload"], separators=(",", ":")).encode()
    assert contract.problems(b"u_1", example["headers"], value) == []
    assert "/asyncapi.json" in requests.get(api_url + "/openapi.json", timeout=10).json()["paths"]
