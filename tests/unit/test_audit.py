"""The audit trail against fakes: who each state change names, the HMAC chain, verify, purge; signatures."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta

from payment_service.domain import audit
from payment_service.domain.audit import AuditEvent, ChainHead
from payment_service.services import api_keys
from payment_service.services import audit as audit_service
from payment_service.services.audit import AuditFilter, AuditStore, PurgeReport

from .fakes import Clock
from .test_webhook_and_jobs_services import apply, deliver, env, expire, start_3ds, topup  # noqa: F401

KEY = b"k" * 32


class FakeAuditStore(AuditStore):
    """The table as a list in id order, and the head."""

    def __init__(self) -> None:
        self.rows: list[AuditEvent] = []
        self.chain = ChainHead()

    def append(self, event: AuditEvent) -> None:
        event.id = (self.rows[-1].id or 0) + 1 if self.rows else 1
        self.rows.append(event)

    def seal(self, key: bytes, batch: int) -> int:
        todo = [r for r in self.rows if r.seq is None][:batch]
        audit.seal(key, self.chain, todo)
        return len(todo)

    def head(self) -> ChainHead:
        return dataclasses.replace(self.chain)

    def sealed(self, after_seq: int, up_to_seq: int) -> Iterator[AuditEvent]:
        return iter(sorted((r for r in self.rows if r.seq is not None and after_seq < r.seq <= up_to_seq),
                           key=lambda r: r.seq or 0))

    def unsealed_count(self) -> int:
        return sum(1 for r in self.rows if r.seq is None)

    def between(self, since: datetime | None, until: datetime | None) -> Iterator[AuditEvent]:
        return iter(r for r in self.rows if (since is None or r.occurred_at >= since)
                    and (until is None or r.occurred_at < until))

    def purge_before(self, key: bytes, before: datetime) -> PurgeReport:
        kept = [r for r in self.rows if r.seq is not None and r.occurred_at >= before]
        cut = self.chain.last_seq if not kept else min(r.seq or 0 for r in kept) - 1
        if cut <= self.chain.anchor_seq:
            return PurgeReport(0, self.chain.anchor_seq)
        anchor = next(r for r in self.rows if r.seq == cut)
        self.chain.anchor_seq, self.chain.anchor_hash = cut, anchor.hash or ""
        self.chain.sign(key)
        before_n = len(self.rows)
        self.rows = [r for r in self.rows if r.seq is None or r.seq > cut]
        return PurgeReport(before_n - len(self.rows), cut)

    def page(self, flt: AuditFilter, limit: int, before_id: int | None) -> list[AuditEvent]:
        rows = [r for r in reversed(self.rows) if before_id is None or (r.id or 0) < before_id]
        return rows[:limit]


def filled(n: int, clock: Clock) -> FakeAuditStore:
    store = FakeAuditStore()
    for i in range(n):
        clock.advance(seconds=1)
        store.append(audit.event(clock(), "payment.captured", audit.SUCCEEDED, f"row {i}",
                                 resource_type="payment", resource_id=f"pay_{i}"))
    return store


# --- who each state change names --------------------------------------------------------------


def test_a_request_s_moves_name_the_user_request_and_address(env) -> None:  # noqa: F811
    _, store, _, _ = env
    with audit.acting_as(audit.Actor("user", "u_1"), "req_1", "203.0.113.7"):
        payment = topup(env)
    (row,) = [r for r in store.audit if r.resource_id == payment.id]
    assert (row.actor, row.action, row.outcome, row.request_id, row.source) == (
        "user:u_1", "payment.captured", "succeeded", "req_1", "203.0.113.7")
    assert row.resource_type == "payment" and payment.id in row.summary


def test_a_webhook_s_moves_name_the_gateway_and_its_event(env) -> None:  # noqa: F811
    _, store, _, _ = env
    payment = start_3ds(env)
    deliver(env, "evt_w1", "succeeded", payment.gateway_payment_id, payment.id)
    apply(env)
    rows = [r for r in store.audit if r.action == "payment.captured"]
    assert [(r.actor, r.request_id) for r in rows] == [("gateway:stripe", "evt_w1")]


def test_a_sweep_s_moves_name_the_job(env) -> None:  # noqa: F811
    _, store, _, clock = env
    payment = start_3ds(env)
    clock.advance(seconds=901)
    expire(env)
    rows = [r for r in store.audit if r.resource_id == payment.id and r.action == "payment.expired"]
    assert [r.actor for r in rows] == ["job:expire_pending_3ds"]
    assert "(expired)" in rows[0].summary


def test_a_move_outside_any_context_is_the_system_s_and_a_rolled_back_move_leaves_no_row(env) -> None:  # noqa: F811
    _, store, _, _ = env
    topup(env)
    assert [r.actor for r in store.audit] == ["system:service"]


def test_rows_mask_card_numbers_and_fit_their_columns() -> None:
    row = audit.event(Clock()(), "POST /payments/4242424242424242/refunds", audit.REJECTED, "x" * 400,
                      resource_id="4242 4242 4242 4242")
    assert "4242424242424242" not in row.action and "4242 4242 4242 4242" not in (row.resource_id or "")
    assert len(row.summary) == 255


# --- the chain ------------------------------------------------------------------------------


def test_an_untouched_chain_verifies_and_every_kind_of_tampering_is_named() -> None:
    clock = Clock()
    store = filled(6, clock)
    report = audit_service.verify(store, KEY)
    assert report.ok and report.checked == 6

    changed = filled(6, Clock())
    audit_service.seal_pending(changed, KEY)
    changed.rows[2].summary = "nothing to see"
    report = audit_service.verify(changed, KEY)
    assert not report.ok and report.row_id == 3 and "was changed" in (report.problem or "")

    removed = filled(6, Clock())
    audit_service.seal_pending(removed, KEY)
    del removed.rows[3]
    report = audit_service.verify(removed, KEY)
    assert not report.ok and "removed" in (report.problem or "") and report.row_id == 5

    swapped = filled(6, Clock())
    audit_service.seal_pending(swapped, KEY)
    a, b = swapped.rows[1], swapped.rows[2]
    a.seq, b.seq = b.seq, a.seq
    report = audit_service.verify(swapped, KEY)
    assert not report.ok and report.row_id == 3 and "out of place" in (report.problem or "")

    tail = filled(6, Clock())
    audit_service.seal_pending(tail, KEY)
    tail.rows.pop()
    report = audit_service.verify(tail, KEY)
    assert not report.ok and "at the end" in (report.problem or "")

    wrong_key = filled(3, Clock())
    audit_service.seal_pending(wrong_key, KEY)
    assert not audit_service.verify(wrong_key, b"x" * 32).ok


def test_rows_written_late_are_chained_after_the_ones_sealed_already() -> None:
    clock = Clock()
    store = filled(3, clock)
    audit_service.seal_pending(store, KEY)
    store.append(audit.event(clock(), "payment.failed", audit.SUCCEEDED, "late"))
    assert audit_service.verify(store, KEY, seal_first=False).unsealed == 1
    report = audit_service.verify(store, KEY)
    assert report.ok and report.checked == 4 and store.rows[-1].seq == 4


def test_after_a_purge_the_rest_still_verifies_and_the_purge_is_recorded() -> None:
    clock = Clock()
    store = filled(10, clock)
    cutoff = store.rows[4].occurred_at + timedelta(microseconds=1)
    with audit.acting_as(audit.Actor("cli", "ops")):
        report = audit_service.purge(store, KEY, cutoff, clock())
    assert report.removed == 5 and report.anchor_seq == 5
    purge_row = store.rows[-1]
    assert (purge_row.action, purge_row.actor) == ("audit.purge", "cli:ops")
    verified = audit_service.verify(store, KEY)
    assert verified.ok and verified.checked == 6  # five kept and the purge's own row
    # The anchor is under the head's MAC: moving it to hide more rows is seen.
    store.chain.anchor_seq = 7
    assert "chain head" in (audit_service.verify(store, KEY).problem or "")


# --- signatures -------------------------------------------------------------------------------


SECRET = api_keys.derive_signing_secret("m" * 32, "cli_1", "salt")
BODY = b'{"amount": 100}'


def check(header: str | None, now: float = 1_000_000.0, secrets: tuple[str, ...] = (SECRET,),
          body: bytes = BODY) -> api_keys.SignatureCheck:
    return api_keys.check_signature(header, secrets, "POST", "/payments/pay_1/refunds?x=1", body, now)


def test_a_signature_over_time_method_path_and_body_is_accepted_within_300_s() -> None:
    header = api_keys.signature_header(SECRET, "POST", "/payments/pay_1/refunds?x=1", BODY, 1_000_000)
    assert check(header).code is None
    assert check(header, now=1_000_300.0).code is None
    assert check(header, now=1_000_301.0).code == "signature_expired"
    assert check(header, body=b'{"amount": 101}').code == "signature_invalid"
    assert check(header, secrets=(api_keys.derive_signing_secret("m" * 32, "cli_1", "other"),)).code == \
        "signature_invalid"
    assert check(None).code == "signature_required"
    assert check("t=abc,v1=00").code == "signature_invalid"


def test_during_a_rotation_either_secret_signs() -> None:
    new = api_keys.derive_signing_secret("m" * 32, "cli_1", "salt2")
    old_header = api_keys.signature_header(SECRET, "POST", "/payments/pay_1/refunds?x=1", BODY, 1_000_000)
    assert check(old_header, secrets=(new, SECRET)).code is None
    assert check(old_header, secrets=(new,)).code == "signature_invalid"


def test_secrets_are_derived_from_master_key_client_and_salt() -> None:
    a = api_keys.derive_signing_secret("m" * 32, "cli_1", "salt")
    assert a == SECRET and a.startswith("pss_") and len(a) == 47
    assert a != api_keys.derive_signing_secret("n" * 32, "cli_1", "salt")
    assert a != api_keys.derive_signing_secret("m" * 32, "cli_2", "salt")
