"""The contract of `payment.events` for its consumers: the AsyncAPI 3.0 document, its checker, the consumer helper.

- `asyncapi.json` (package data): the machine-readable contract, served at `GET /asyncapi.json`.
- `contract.py`: checks one Kafka message (key, headers, value) against that document (jsonschema).
- `consumer.py`: what a consumer needs (signature check with key rotation, parsing, dedupe by event id);
  standard library only, so a wallet service can vendor the one file.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

ASYNCAPI_FILE = "asyncapi.json"


@cache
def asyncapi_bytes() -> bytes:
    """The AsyncAPI document exactly as kept in the package."""
    return files(__name__).joinpath(ASYNCAPI_FILE).read_bytes()


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI document, parsed (a new copy each call: callers may change it)."""
    document: dict[str, Any] = json.loads(asyncapi_bytes())
    return document
