"""One Kafka message of `payment.events` checked against the AsyncAPI document (`asyncapi.json`).

`EventContract().problems(key, headers, value)` lists what is wrong with a message as it sits on the topic:
its headers, its value (the CloudEvents document and the `data` of its type) and its key, each against the
schemas of the document, then the rules no schema can say across them: the key is `data.user_id`, the
headers repeat the value's `id` and `type`, the `subject` is the id in `data`. The signature is not
checked here (that needs the key: `consumer.py`). The tests run every message they read through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from . import asyncapi_document

CHANNEL = "paymentEvents"
_MAX_PROBLEM = 300  # characters of one problem: a schema error quotes the instance, which may be long

HeaderList = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


class ContractViolation(AssertionError):
    """A message that does not match the AsyncAPI document (an AssertionError, so a test that reads one fails)."""


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode()  # UnicodeDecodeError is reported by the caller


def _short(text: str) -> str:
    return text if len(text) <= _MAX_PROBLEM else text[: _MAX_PROBLEM - 3] + "..."


class EventContract:
    """The document's schemas, compiled once: one validator each for a type's headers, value and key."""

    def __init__(self, document: Mapping[str, Any] | None = None) -> None:
        doc = dict(document) if document is not None else asyncapi_document()
        uri = str(doc.get("id") or "urn:asyncapi")
        resource: Resource[Any] = Resource.from_contents(doc, default_specification=DRAFT7)
        registry: Registry[Any] = Registry().with_resource(uri, resource)
        self.document = doc
        self._validators: dict[str, tuple[Draft7Validator, Draft7Validator, Draft7Validator]] = {}
        for ref in doc["channels"][CHANNEL]["messages"].values():
            pointer = f"{uri}{ref['$ref']}"  # "...#/components/messages/<TYPE>"
            message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            headers, payload, key = (
                Draft7Validator({"$ref": f"{pointer}/{part}"}, registry=registry)
                for part in ("headers", "payload", "bindings/kafka/key")
            )
            self._validators[message["name"]] = (headers, payload, key)

    @property
    def event_types(self) -> list[str]:
        return list(self._validators)

    def problems(self, key: bytes | str | None, headers: HeaderList, value: bytes | str | None) -> list[str]:
        """What is wrong with this message; empty when it matches the document."""
        found: list[str] = []
        header_map = self._headers(headers, found)
        try:
            document = json.loads(value) if value is not None else None
        except ValueError as exc:
            return [*found, f"value is not JSON ({type(exc).__name__})"]
        if not isinstance(document, dict):
            return [*found, "value is not a JSON object (a CloudEvents document)"]
        event_type = document.get("type")
        if event_type not in self._validators:
            event_type = header_map.get("event_type")
        if event_type not in self._validators:
            return [*found, f"unknown event type {document.get('type')!r} (known: {', '.join(self._validators)})"]
        headers_schema, payload_schema, key_schema = self._validators[str(event_type)]
        try:
            key_text = _text(key)
        except UnicodeDecodeError:
            key_text = None
            found.append("key is not UTF-8")
        for where, validator, instance in (
            ("headers", headers_schema, header_map),
            ("value", payload_schema, document),
            ("key", key_schema, key_text),
        ):
            for err in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
                path = "/".join(str(p) for p in err.absolute_path)
                found.append(_short(f"{event_type} {where}{'/' + path if path else ''}: {err.message}"))
        found.extend(self._across(document, header_map, key_text))
        return found

    def check(self, key: bytes | str | None, headers: HeaderList, value: bytes | str | None) -> None:
        """Raise ContractViolation listing every problem of this message."""
        problems = self.problems(key, headers, value)
        if problems:
            raise ContractViolation("message does not match the AsyncAPI document:\n  " + "\n  ".join(problems))

    @staticmethod
    def _headers(headers: HeaderList, found: list[str]) -> dict[str, str]:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, str] = {}
        for name, raw in pairs:
            if name in out:
                found.append(f"header {name!r} appears more than once")
            try:
                text = _text(raw)
            except UnicodeDecodeError:
                found.append(f"header {name!r} is not UTF-8")
                continue
            if text is None:
                found.append(f"header {name!r} has no value")
                continue
            out[name] = text
        return out

    @staticmethod
    def _across(document: dict[str, Any], headers: dict[str, str], key: str | None) -> list[str]:
        found: list[str] = []
        raw_data = document.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        if "event_id" in headers and headers["event_id"] != document.get("id"):
            found.append("header event_id differs from the value's id")
        if "event_type" in headers and headers["event_type"] != document.get("type"):
            found.append("header event_type differs from the value's type")
        if key is not None and "user_id" in data and key != data["user_id"]:
            found.append("key differs from data.user_id")
        own_id = data.get("payment_id", data.get("withdrawal_id"))
        if own_id is not None and document.get("subject") != own_id:
            found.append("subject differs from the id in data (payment_id or withdrawal_id)")
        return found
