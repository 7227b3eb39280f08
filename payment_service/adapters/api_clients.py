"""Service clients, their API keys and signing secrets, over `api_clients`, `api_keys`, `api_signing_secrets`.

The session's life belongs to the caller (the CLI, a request): these methods flush but never
commit. Only the SHA-256 of a key and its
display prefix are stored; the plaintext leaves `create_client`, `add_key` and `rotate` once, in an
`IssuedKey`, and is not kept anywhere. A signing secret is not stored at all: a random salt is, and
the secret is derived from it and CLIENT_SIGNING_MASTER_KEY when a signature is checked. Every
administrative operation writes its audit row in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..domain import audit, ids
from ..domain.errors import Conflict, NotFound, ValidationFailed
from ..domain.events import utcnow
from ..domain.principal import Principal
from ..services import api_keys
from ..services.api_keys import ClientInfo, IssuedKey, IssuedSigningSecret, KeyInfo
from .audit_store import SqlAuditLog
from .orm import ApiClientRow, ApiKeyRow, ApiSigningSecretRow, RequestSignatureRow


class SqlAlchemyApiClientRepository:
    def __init__(self, session: Session, now: Callable[[], datetime] = utcnow):
        self.session = session
        self.now = now

    # --- authentication (every request with X-API-Key) ---

    def authenticate(self, plaintext: str) -> Principal | None:
        """The client behind a key, or None: unknown, revoked or expired key, or disabled client.

        One indexed lookup by the key's hash (UNIQUE key_hash). Comparing hashes in the database
        leaks nothing useful through timing: an attacker cannot choose a key whose hash is near a
        stored one.
        """
        if not api_keys.looks_like_key(plaintext):
            return None
        row = self.session.execute(
            select(ApiKeyRow.expires_at, ApiKeyRow.revoked_at, ApiKeyRow.prefix, ApiClientRow)
            .join(ApiClientRow, ApiClientRow.id == ApiKeyRow.client_id)
            .where(ApiKeyRow.key_hash == api_keys.hash_key(plaintext))
        ).one_or_none()
        if row is None:
            return None
        expires_at, revoked_at, prefix, client = row
        if revoked_at is not None or client.disabled_at is not None:
            return None
        if expires_at is not None and expires_at <= self.now():
            return None
        return Principal(
            kind="client", id=client.id, scopes=api_keys.scopes_from_column(client.scopes), name=client.name,
            key_prefix=prefix, require_signing=bool(client.require_signing),
        )

    # --- signed requests (every mutation of a client that requires signing) ---

    def signing_secrets(self, client_id: str, master_key: str) -> list[str]:
        """The client's signing secrets that are valid now (several during a rotation's overlap)."""
        now = self.now()
        rows = self.session.execute(
            select(ApiSigningSecretRow.salt, ApiSigningSecretRow.expires_at)
            .where(ApiSigningSecretRow.client_id == client_id, ApiSigningSecretRow.revoked_at.is_(None))
            .order_by(ApiSigningSecretRow.id.desc())
        ).all()
        return [api_keys.derive_signing_secret(master_key, client_id, salt)
                for salt, expires_at in rows if expires_at is None or expires_at > now]

    def remember_signature(self, client_id: str, token: str, expires_at: datetime) -> bool:
        """Record a signature as used; False if it was used before (a replay). The caller commits at once
        (api/auth.py, before the view runs): the record holds whatever the request does next, and another
        API process inserting the same signature waits on the key and then finds it taken."""
        try:
            with self.session.begin_nested():
                self.session.execute(
                    insert(RequestSignatureRow).values(signature_hash=token, client_id=client_id, expires_at=expires_at)
                )
        except IntegrityError:
            return False
        return True

    def enable_signing(self, name: str, master_key: str) -> IssuedSigningSecret | None:
        """Require signed mutations from client NAME; a first signing secret if it has no valid one
        (returned once), else None."""
        client = self._active_client(name)
        client.require_signing = True
        issued = None if self.signing_secrets(client.id, master_key) else self._issue_secret(client, master_key)
        self.session.flush()
        self._audit("client.signing.require", client, "signed mutations required"
                    + (f"; signing secret {issued.prefix} issued" if issued else ""))
        return issued

    def disable_signing(self, name: str) -> bool:
        """Stop requiring signatures (secrets are kept). False if it was not required."""
        client = self._require(name)
        if not client.require_signing:
            return False
        client.require_signing = False
        self.session.flush()
        self._audit("client.signing.unrequire", client, "signed mutations no longer required")
        return True

    def rotate_signing_secret(
        self, name: str, master_key: str, expire_old_in: int | None = None
    ) -> IssuedSigningSecret:
        """A new signing secret; with `expire_old_in` seconds the older ones stop working then (both sign
        during the overlap), without it they stay valid until revoked."""
        if expire_old_in is not None and expire_old_in < 0:
            raise ValidationFailed("expire_old_in must be 0 or more seconds", field="expire_old_in")
        client = self._active_client(name)
        if expire_old_in is not None:
            deadline = self.now() + timedelta(seconds=expire_old_in)
            for row in self.session.execute(
                select(ApiSigningSecretRow).where(ApiSigningSecretRow.client_id == client.id).with_for_update()
            ).scalars():
                if row.revoked_at is None and (row.expires_at is None or row.expires_at > deadline):
                    row.expires_at = deadline
        issued = self._issue_secret(client, master_key)
        self._audit("client.signing.rotate", client, f"signing secret {issued.prefix} issued"
                    + (f"; older ones expire in {expire_old_in} s" if expire_old_in is not None else ""))
        return issued

    # --- administration (the `payment-service clients` commands) ---

    def create_client(self, name: str, scopes: Iterable[str]) -> IssuedKey:
        """A new client with one key. Conflict if the name is taken."""
        name = api_keys.validate_client_name(name)
        wanted = api_keys.validate_scopes(scopes)
        if self._find(name) is not None:
            raise Conflict(f"a client named {name!r} already exists", field="name")
        client = ApiClientRow(
            id=ids.new_id(ids.CLIENT),
            name=name,
            scopes=api_keys.scopes_to_column(wanted),
            created_at=self.now(),
            disabled_at=None,
        )
        self.session.add(client)
        try:
            self.session.flush()
        except IntegrityError:  # a concurrent create with the same name won the UNIQUE(name)
            raise Conflict(f"a client named {name!r} already exists", field="name") from None
        self._audit("client.create", client, f"client {name} created with scopes {client.scopes}")
        return self._issue(client)

    def add_key(self, name: str) -> IssuedKey:
        """One more active key for the client; its other keys keep working."""
        return self._issue(self._active_client(name))

    def rotate(self, name: str, expire_old_in: int | None = None) -> IssuedKey:
        """A new key; with `expire_old_in` seconds, the client's older keys stop working then.

        Both keys work during the overlap, so the caller can roll the new one out first. Without
        `expire_old_in` the old keys stay valid until revoked. An older key that already expires
        sooner keeps its earlier expiry.
        """
        if expire_old_in is not None and expire_old_in < 0:
            raise ValidationFailed("expire_old_in must be 0 or more seconds", field="expire_old_in")
        client = self._active_client(name)
        now = self.now()
        if expire_old_in is not None:
            deadline = now + timedelta(seconds=expire_old_in)
            for key in self._keys(client.id):
                if key.revoked_at is None and (key.expires_at is None or key.expires_at > deadline):
                    key.expires_at = deadline
            self._audit("client.key.rotate", client, f"older keys expire in {expire_old_in} s")
        return self._issue(client)

    def revoke(self, name: str, key_prefix: str | None = None) -> int:
        """Revoke one key (by its display prefix) or, without a prefix, every key of the client.

        Returns how many keys were revoked. NotFound if a prefix matches no unrevoked key.
        """
        client = self._require(name)
        stmt = (
            update(ApiKeyRow)
            .where(ApiKeyRow.client_id == client.id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=self.now())
        )
        if key_prefix is not None:
            stmt = stmt.where(ApiKeyRow.prefix == key_prefix)
        count: int = self.session.execute(stmt, execution_options={"synchronize_session": False}).rowcount  # type: ignore[attr-defined]
        if key_prefix is not None and count == 0:
            raise NotFound(f"client {name!r} has no unrevoked key with prefix {key_prefix!r}", field="key_prefix")
        self._audit("client.key.revoke", client, f"{count} key(s) revoked" + (f": {key_prefix}" if key_prefix else ""))
        return count

    def disable(self, name: str) -> bool:
        """Disable the client: none of its keys authenticate any more. False if it already was."""
        client = self._require(name)
        if client.disabled_at is not None:
            return False
        client.disabled_at = self.now()
        self.session.flush()
        self._audit("client.disable", client, f"client {name} disabled")
        return True

    def list_clients(self) -> list[ClientInfo]:
        """Every client with its scopes and its keys' prefixes and dates; never a hash."""
        clients = self.session.execute(select(ApiClientRow).order_by(ApiClientRow.name)).scalars().all()
        keys = self.session.execute(
            select(
                ApiKeyRow.client_id, ApiKeyRow.prefix, ApiKeyRow.created_at, ApiKeyRow.expires_at, ApiKeyRow.revoked_at
            ).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        ).all()
        by_client: dict[str, list[KeyInfo]] = {}
        for client_id, prefix, created_at, expires_at, revoked_at in keys:
            by_client.setdefault(client_id, []).append(KeyInfo(prefix, created_at, expires_at, revoked_at))
        by_secret: dict[str, list[KeyInfo]] = {}
        for s in self.session.execute(select(ApiSigningSecretRow).order_by(ApiSigningSecretRow.id)).scalars():
            by_secret.setdefault(s.client_id, []).append(KeyInfo(s.prefix, s.created_at, s.expires_at, s.revoked_at))
        return [
            ClientInfo(
                id=c.id,
                name=c.name,
                scopes=api_keys.scopes_from_column(c.scopes),
                created_at=c.created_at,
                disabled_at=c.disabled_at,
                keys=tuple(by_client.get(c.id, ())),
                require_signing=bool(c.require_signing),
                signing_secrets=tuple(by_secret.get(c.id, ())),
            )
            for c in clients
        ]

    # --- helpers ---

    def _issue(self, client: ApiClientRow) -> IssuedKey:
        key = api_keys.generate_key()
        created_at = self.now()
        self.session.add(
            ApiKeyRow(
                client_id=client.id,
                prefix=api_keys.display_prefix(key),
                key_hash=api_keys.hash_key(key),
                created_at=created_at,
                expires_at=None,
                revoked_at=None,
            )
        )
        self.session.flush()
        self._audit("client.key.issue", client, f"API key {api_keys.display_prefix(key)} issued")
        return IssuedKey(
            client_id=client.id,
            client_name=client.name,
            key=key,
            prefix=api_keys.display_prefix(key),
            created_at=created_at,
        )

    def _issue_secret(self, client: ApiClientRow, master_key: str) -> IssuedSigningSecret:
        salt = api_keys.generate_salt()
        secret = api_keys.derive_signing_secret(master_key, client.id, salt)
        created_at = self.now()
        prefix = api_keys.display_prefix(secret)
        self.session.add(ApiSigningSecretRow(client_id=client.id, prefix=prefix, salt=salt, created_at=created_at,
                                             expires_at=None, revoked_at=None))
        self.session.flush()
        return IssuedSigningSecret(client.id, client.name, secret, prefix, created_at)

    def _audit(self, action: str, client: ApiClientRow, summary: str) -> None:
        # In the command's own transaction: the operation and its audit row commit together.
        SqlAuditLog(self.session).add(audit.event(
            self.now(), action, audit.SUCCEEDED, summary, resource_type="api_client", resource_id=client.id,
        ))

    def _find(self, name: str) -> ApiClientRow | None:
        return self.session.execute(select(ApiClientRow).where(ApiClientRow.name == name)).scalar_one_or_none()

    def _require(self, name: str) -> ApiClientRow:
        client = self._find(name)
        if client is None:
            raise NotFound(f"no client named {name!r}", field="name")
        return client

    def _active_client(self, name: str) -> ApiClientRow:
        client = self._require(name)
        if client.disabled_at is not None:
            raise Conflict(f"client {name!r} is disabled", field="name")
        return client

    def _keys(self, client_id: str) -> list[ApiKeyRow]:
        return list(
            self.session.execute(select(ApiKeyRow).where(ApiKeyRow.client_id == client_id).with_for_update()).scalars()
        )


def purge_request_signatures(engine: Engine, now: datetime) -> int:
    """Forget signatures past their tolerance window (they can no longer be replayed); rows deleted."""
    with engine.begin() as conn:
        result = conn.execute(delete(RequestSignatureRow).where(RequestSignatureRow.expires_at < now))
    return int(result.rowcount)
