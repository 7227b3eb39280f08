"""Who is calling: an end user (JWT) or a service client (API key with scopes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SCOPES = frozenset({"payments:read", "payments:refund", "withdrawals:write", "withdrawals:read", "audit:read"})


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "client"]
    id: str  # the user id (JWT `sub`) or the client id (cli_...)
    scopes: frozenset[str] = field(default_factory=frozenset)
    name: str | None = None  # the client's name, for logs
    key_prefix: str | None = None  # the API key's display prefix, for the audit trail
    require_signing: bool = False  # mutations must carry X-Signature (docs/auth.md)

    @property
    def caller_key(self) -> str:
        """Scope of idempotency keys and rate limits: `user:<sub>` or `client:<id>`."""
        return f"{self.kind}:{self.id}"

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    def has_scope(self, scope: str) -> bool:
        return self.kind == "client" and scope in self.scopes
