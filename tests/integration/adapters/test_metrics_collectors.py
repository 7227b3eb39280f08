"""The scrape-time collectors that read MariaDB (lifecycle, outbox), and what a scrape gives when the
database is away: nothing from them, and no error. The inbox collector is tested beside the applier
(tests/integration/test_worker_keeps_up.py), the pool's in tests/integration/test_pool_metrics.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, update

from payment_service.adapters.lifecycle_metrics import LifecycleCollector
from payment_service.adapters.orm import OutboxEventRow
from payment_service.adapters.outbox_metrics import OutboxCollector
from payment_service.adapters.unit_of_work import SqlAlchemyUnitOfWork
from payment_service.domain import lifecycle
from tests.integration.adapters.records import later, now, payment, refund, withdrawal

UowFactory = Callable[[], SqlAlchemyUnitOfWork]


def samples(collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in collector.collect() for s in family.samples}


def delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_lifecycle_figures_count_open_failing_claimed_and_late_refunds(engine: Engine, uow_factory: UowFactory) -> None:
    collector = LifecycleCollector(lambda: engine)
    before = samples(collector)
    captured = payment("CAPTURED", gateway_payment_id="pi_metrics_1")
    with uow_factory() as uow:
        uow.payments.add(captured)
        uow.payments.add(payment("PENDING", claimed_until=later(60)))
        uow.payments.add(payment("PENDING_3DS", last_error="gateway unavailable"))
        uow.payments.add(payment("FAILED"))  # closed: not counted
        uow.withdrawals.add(withdrawal("PROCESSING"))
        uow.refunds.add(refund(captured, "PENDING", reason=lifecycle.LATE_SUCCESS_REASON,
                               gateway_payment_id="pi_metrics_2"))
        uow.commit()
    assert delta(before, samples(collector)) == {
        ("payment_lifecycle_open_records", (("kind", "payment"), ("status", "PENDING"))): 1,
        ("payment_lifecycle_open_records", (("kind", "payment"), ("status", "PENDING_3DS"))): 1,
        ("payment_lifecycle_open_records", (("kind", "withdrawal"), ("status", "PROCESSING"))): 1,
        ("payment_lifecycle_open_records", (("kind", "refund"), ("status", "PENDING"))): 1,
        ("payment_lifecycle_failing_records", (("kind", "payment"),)): 1,
        ("payment_lifecycle_claimed_records", (("kind", "payment"),)): 1,
        ("payment_late_success_refunds", (("status", "PENDING"),)): 1,
    }


def test_outbox_figures_are_the_backlog_and_the_age_of_its_oldest_row(engine: Engine, uow_factory: UowFactory) -> None:
    collector = OutboxCollector()
    collector.set_source("api", lambda: None)  # outside a request: skipped
    collector.set_source("relay", lambda: engine)
    p = payment()
    old = lifecycle.payment_failed_event(p)
    with uow_factory() as uow:
        uow.outbox.add(replace(old, time=now() - timedelta(minutes=2)))
        uow.outbox.add(lifecycle.payment_expired_event(p, now()))
        uow.commit()
    backlog = samples(collector)
    assert backlog[("outbox_backlog", ())] >= 2
    assert backlog[("outbox_oldest_unpublished_age_seconds", ())] >= 120
    with engine.begin() as conn:
        conn.execute(update(OutboxEventRow).values(published_at=datetime.now(UTC)))
    assert samples(collector) == {("outbox_backlog", ()): 0, ("outbox_oldest_unpublished_age_seconds", ()): 0.0}


@pytest.fixture
def unreachable() -> Iterator[Engine]:
    # A port nothing listens on (the discard port): the connection is refused at once.
    eng = create_engine("mysql+pymysql://nobody:nothing@127.0.0.1:9/none", connect_args={"connect_timeout": 2})
    yield eng
    eng.dispose()


def test_a_database_that_is_away_leaves_the_figures_out_of_the_scrape(unreachable: Engine) -> None:
    outbox = OutboxCollector()
    outbox.set_source("relay", lambda: unreachable)
    assert samples(LifecycleCollector(lambda: unreachable)) == {}
    assert samples(outbox) == {}
    assert samples(LifecycleCollector(lambda: None)) == {}  # no engine yet: nothing to say
