"""Fault injection: rules that make matching gateway requests fail, time out, slow down or lose their answer."""

from __future__ import annotations

import random
import re
import secrets
import threading
from dataclasses import dataclass, field


@dataclass
class FaultRule:
    """One fault: applies to requests whose method and path match, `remaining` times (None: always).

    mode: "error" (answer `status` with an error body, nothing done), "timeout" (sleep
    `latency_ms` then drop the connection, nothing done), "latency" (sleep, then handle normally),
    "lost_response" (handle the request for real, then answer 500 as if the response was lost:
    the charge happened but the caller cannot know).
    """

    mode: str
    path: str = ".*"  # a regular expression matched against the full path
    method: str = "*"
    status: int = 500
    latency_ms: int = 0
    remaining: int | None = 1
    probability: float = 1.0
    id: str = field(default_factory=lambda: "flt_" + secrets.token_hex(4))

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None


class Faults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> FaultRule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path) and random.random() < rule.probability:  # noqa: S311
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self.rules.remove(rule)
                    return rule
        return None

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
