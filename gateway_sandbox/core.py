"""The sandbox's state: its objects (and copying them), idempotent responses, and `current_sandbox()` for the wire APIs.

Each gateway's wire API is a blueprint of its own (the stripe/ package under /stripe, razorpay/
under /razorpay); both reach the objects here through `current_sandbox()`. The app is put together
in app.py; faults in faults.py, webhook delivery in webhooks.py, the admin API in admin.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from .config import SandboxConfig
from .faults import Faults
from .webhooks import WebhookDispatcher, WebhookKnobs

EXTENSION_KEY = "payment_sandbox"

# Types whose values are never copied: immutable, as copy.deepcopy also hands them back as they are.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON-like value (dicts, lists, strings, numbers, booleans, None), what
    copy.deepcopy would give for it at a fraction of its cost: the objects are plain dicts, and every
    event (and error body) holds a copy of one. Anything else inside is handed to copy.deepcopy."""
    cls = type(value)
    if cls is dict:
        return {k: v if type(v) in _IMMUTABLE else json_copy(v) for k, v in value.items()}
    if cls is list:
        return [v if type(v) in _IMMUTABLE else json_copy(v) for v in value]
    if cls in _IMMUTABLE:
        return value
    return copy.deepcopy(value)


def public_copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a gateway object without the sandbox's private top-level `_` fields."""
    return {k: v if type(v) in _IMMUTABLE else json_copy(v) for k, v in obj.items() if not k.startswith("_")}


class Store:
    """All sandbox objects by id, behind one lock. Objects are plain dicts in the gateway's own shape."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[str, dict[str, Any]] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(8)}"

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.objects[obj["id"]] = obj
        return obj

    def get(self, object_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.objects.get(object_id)

    def find(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [o for o in self.objects.values() if predicate(o)]

    def clear(self) -> None:
        with self.lock:
            self.objects.clear()


@dataclass
class StoredResponse:
    fingerprint: str
    status: int
    body: bytes
    headers: dict[str, str]


class IdempotencyCache:
    """Remembers responses by (scope, key): the same key and parameters get the same response back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, str], StoredResponse] = {}
        self.in_flight: set[tuple[str, str]] = set()

    @staticmethod
    def fingerprint(method: str, path: str, params: Any) -> str:
        blob = json.dumps([method, path, params], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def begin(self, scope: str, key: str) -> StoredResponse | None | bool:
        """The stored response, None to go ahead (now marked in flight), or False if in flight."""
        with self.lock:
            if (scope, key) in self.entries:
                return self.entries[(scope, key)]
            if (scope, key) in self.in_flight:
                return False
            self.in_flight.add((scope, key))
            return None

    def finish(self, scope: str, key: str, stored: StoredResponse | None) -> None:
        with self.lock:
            self.in_flight.discard((scope, key))
            if stored is not None:
                self.entries[(scope, key)] = stored

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.in_flight.clear()


class Sandbox:
    """Everything one sandbox app holds; reach it in a request with `current_sandbox()`."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.store = Store()
        self.idempotency = IdempotencyCache()
        self.faults = Faults()
        self.webhooks = WebhookDispatcher(config)

    def reset(self) -> None:
        self.store.clear()
        self.idempotency.clear()
        self.faults.clear()
        with self.webhooks.lock:
            self.webhooks.knobs = WebhookKnobs()
            self.webhooks.log.clear()
            self.webhooks.held.clear()


def current_sandbox() -> Sandbox:
    sandbox: Sandbox = current_app.extensions[EXTENSION_KEY]
    return sandbox
