"""The one place that builds concrete parts (cosmicpython's bootstrap): engines, units of work, gateways, relay.

The API, the worker, the relay, the CLI and `dev` all get their parts here, typed: nothing else
constructs an engine, a repository, a gateway or a producer. The sweeps are a table built here
(`Container.sweeps`), the retention purges another (`Container.purges`); the payout gateway is chosen
here and injected. Imports of the concrete adapters are inside the factories, so a process loads only
what it uses (the API never loads confluent-kafka).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from config import Settings

if TYPE_CHECKING:
    from .adapters.api_clients import SqlAlchemyApiClientRepository
    from .adapters.audit_store import SqlAuditStore
    from .adapters.fx_rates import CanonicalAmounts
    from .adapters.kafka_publisher import Delivered
    from .domain.breaker import CircuitBreaker
    from .gateways.base import Gateway
    from .services.lifecycle import Stop, SweepPolicy, SweepReport
    from .services.payments import PaymentSettings
    from .services.reconciliation import RunLog, SettlementLedger
    from .services.refunds import RefundSettings
    from .services.unit_of_work import AbstractUnitOfWork
    from .services.webhooks import ApplySettings
    from .services.withdrawals import WithdrawalSettings
    from .worker.relay import OutboxRelay

T = TypeVar("T")

# RazorpayX does the payouts (NEFT / IMPS / UPI); the Stripe adapter refuses them.
PAYOUT_GATEWAY = "razorpay"
GATEWAY_NAMES = ("stripe", "razorpay")

def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # Round trips are most of a top-up's cost, so no ping on checkout and no reset on return:
    # a Session always ends its transaction itself (commit, or rollback on close), and a
    # connection that died is invalidated on first use, answered 503, and replaced.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_reset_on_return", None)
    kwargs.setdefault("pool_recycle", 280)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # READ COMMITTED: guarded UPDATEs and row locks see the latest committed row, and no gap locks.
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    engine = create_engine(url, **kwargs)
    from .adapters import deferred_writes, repository

    deferred_writes.install(engine)  # writes nobody reads ride with the COMMIT (adapters/deferred_writes.py)
    repository.translate_key_taken(engine)  # a duplicate key's INSERT, wherever it rode (KeyTaken)
    return engine


@functools.cache
def _unit_of_work_class() -> type[AbstractUnitOfWork]:
    from .adapters.unit_of_work import SqlAlchemyUnitOfWork

    return SqlAlchemyUnitOfWork


@dataclass(frozen=True)
class ScheduledSweep:
    """One row of the worker's sweep table: its job id, how often it starts, and what it runs."""

    name: str
    every_seconds: float
    run: Callable[[Stop | None], SweepReport]


@dataclass
class Container:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    # Tests put fakes here; otherwise the real adapters are built from settings on first use.
    gateway_overrides: Mapping[str, Gateway] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cache: dict[str, Any] = field(default_factory=dict)

    def uow_factory(self) -> AbstractUnitOfWork:
        # Called for every transaction (the webhook applier: one per event): the class is looked up
        # once, not imported on each call.
        return _unit_of_work_class()(self.session_factory)  # type: ignore[call-arg]

    def gateways(self) -> Mapping[str, Gateway]:
        if self.gateway_overrides is not None:
            return self.gateway_overrides
        breakers = self.breakers()  # outside cached(): its lock is not reentrant
        return self.cached("gateways", lambda: guard_gateways(build_gateways(self.settings), breakers))

    def payout_gateway(self) -> Gateway:
        return self.gateways()[PAYOUT_GATEWAY]

    def breakers(self) -> dict[str, CircuitBreaker]:
        """One circuit breaker per gateway, for this process (see gateways/resilience.py)."""
        return self.cached("breakers", lambda: build_breakers(self.settings, list(GATEWAY_NAMES)))

    def payment_settings(self) -> PaymentSettings:
        from .services.payments import PaymentSettings
        from .services.risk import RiskRules

        s = self.settings
        canonical = self.canonical_amounts()  # outside cached(): its lock is not reentrant
        return self.cached(
            "payment_settings",
            lambda: PaymentSettings(
                RiskRules.from_settings(s),
                pending_3ds_ttl_seconds=s.PENDING_3DS_TTL_SECONDS,
                reconcile_after_seconds=s.RECONCILE_AFTER_SECONDS,
                replay_window_seconds=s.GATEWAY_REPLAY_WINDOW_SECONDS,
                canonical=canonical,
            ),
        )

    def canonical_amounts(self) -> CanonicalAmounts:
        """Amounts in CANONICAL_CURRENCY at the latest reference rate, refreshed off the request path."""
        from .adapters.fx_rates import CanonicalAmounts, EcbRates

        s = self.settings
        return self.cached(
            "canonical_amounts",
            lambda: CanonicalAmounts(
                EcbRates(s.FX_RATES_URL, s.FX_REFRESH_SECONDS, s.FX_FETCH_TIMEOUT_SECONDS),
                s.CANONICAL_CURRENCY,
                s.FX_MAX_AGE_SECONDS,
            ),
        )

    def refund_settings(self) -> RefundSettings:
        from .services.refunds import RefundSettings

        return RefundSettings(
            retry_after_seconds=self.settings.REFUND_RETRY_AFTER_SECONDS, canonical=self.canonical_amounts()
        )

    def withdrawal_settings(self) -> WithdrawalSettings:
        from .services.withdrawals import WithdrawalSettings

        s = self.settings
        return WithdrawalSettings(
            poll_after_seconds=s.PAYOUT_POLL_AFTER_SECONDS,
            retry_after_seconds=s.WITHDRAWAL_RETRY_AFTER_SECONDS,
            give_up_after_seconds=s.WITHDRAWAL_GIVE_UP_AFTER_SECONDS,
            canonical=self.canonical_amounts(),
        )

    def apply_settings(self) -> ApplySettings:
        from .services.webhooks import ApplySettings

        return ApplySettings(self.payment_settings(), self.refund_settings(), self.withdrawal_settings())

    def sweep_policy(self) -> SweepPolicy:
        from .services.lifecycle import SweepPolicy

        s = self.settings
        return SweepPolicy(
            batch=s.SWEEP_BATCH_SIZE, lease_seconds=s.SWEEP_LEASE_SECONDS, concurrency=s.SWEEP_CONCURRENCY
        )

    def sweeps(self) -> list[ScheduledSweep]:
        """The worker's sweeps, in the order `worker --once` runs them (docs/lifecycle.md)."""
        from .services import jobs, refunds, withdrawals

        s, uow, policy = self.settings, self.uow_factory, self.sweep_policy()
        return [
            ScheduledSweep("expire_pending_3ds", s.WORKER_EXPIRY_INTERVAL_SECONDS,
                           lambda stop: jobs.expire_pending_3ds(
                               uow, self.gateways(), self.payment_settings(), policy=policy, stop=stop)),
            ScheduledSweep("reconcile_pending", s.WORKER_RECONCILE_INTERVAL_SECONDS,
                           lambda stop: jobs.reconcile_pending(
                               uow, self.gateways(), self.payment_settings(), policy=policy, stop=stop)),
            ScheduledSweep("retry_pending_refunds", s.WORKER_REFUND_INTERVAL_SECONDS,
                           lambda stop: refunds.retry_pending_refunds(
                               uow, self.gateways(), self.refund_settings(), policy=policy, stop=stop)),
            ScheduledSweep("resolve_payouts", s.WORKER_PAYOUT_INTERVAL_SECONDS,
                           lambda stop: withdrawals.resolve_withdrawals(
                               uow, self.payout_gateway(), self.withdrawal_settings(), policy=policy, stop=stop)),
        ]

    def purges(self) -> dict[str, Callable[[], int]]:
        """The retention purges the worker runs hourly: table name -> rows deleted."""
        from .adapters import retention
        from .adapters.api_clients import purge_request_signatures
        from .domain.events import utcnow

        s = self.settings
        return {
            "idempotency_keys": lambda: retention.purge_expired_idempotency_keys(self.engine, utcnow()),
            "outbox_events": lambda: retention.purge_outbox(self.engine, s.OUTBOX_RETENTION_SECONDS),
            # signed requests (issue 12): a signature past its window can no longer be replayed
            "request_signatures": lambda: purge_request_signatures(self.engine, utcnow()),
        }

    def settlement(self) -> tuple[SettlementLedger, RunLog]:
        """Settlement reconciliation's storage (issue 13): our side of a day, and the reconcile_runs log."""
        from .adapters.reconciliation_store import SqlRunLog, SqlSettlementLedger

        return SqlSettlementLedger(self.engine), SqlRunLog(self.engine)

    @contextmanager
    def api_clients(self) -> Iterator[SqlAlchemyApiClientRepository]:
        """The service-client store in one transaction: committed when the block ends without an error."""
        from .adapters.api_clients import SqlAlchemyApiClientRepository

        with self.session_factory() as session, session.begin():
            yield SqlAlchemyApiClientRepository(session)

    def audit_store(self) -> SqlAuditStore:
        """The audit trail as a whole (sealer, verify, export, purge, GET /audit-events; issue 12)."""
        from .adapters.audit_store import SqlAuditStore

        return self.cached("audit_store", lambda: SqlAuditStore(self.engine))

    def cached(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = build()
            value: T = self._cache[name]
            return value

    def close(self) -> None:
        self.engine.dispose()


def build_gateways(settings: Settings) -> dict[str, Gateway]:
    from .gateways.razorpay_gateway import RazorpayGateway
    from .gateways.stripe_gateway import StripeGateway

    return {
        "stripe": StripeGateway(
            api_key=settings.STRIPE_API_KEY,
            webhook_secret=settings.STRIPE_WEBHOOK_SECRET,
            api_base=settings.STRIPE_API_BASE,
            timeout=settings.GATEWAY_TIMEOUT_SECONDS,
            max_connections=settings.GATEWAY_MAX_CONNECTIONS,
        ),
        "razorpay": RazorpayGateway(
            key_id=settings.RAZORPAY_KEY_ID,
            key_secret=settings.RAZORPAY_KEY_SECRET,
            webhook_secret=settings.RAZORPAY_WEBHOOK_SECRET,
            api_base=settings.RAZORPAY_API_BASE,
            payout_account_number=settings.RAZORPAYX_ACCOUNT_NUMBER,
            timeout=settings.GATEWAY_TIMEOUT_SECONDS,
            max_connections=settings.GATEWAY_MAX_CONNECTIONS,
        ),
    }


def build_breakers(settings: Settings, names: list[str]) -> dict[str, CircuitBreaker]:
    import time

    from .domain.breaker import BreakerPolicy, CircuitBreaker
    from .gateways.resilience import log_transition

    policy = BreakerPolicy(
        window=settings.GATEWAY_BREAKER_WINDOW,
        window_seconds=settings.GATEWAY_BREAKER_WINDOW_SECONDS,
        min_calls=settings.GATEWAY_BREAKER_MIN_CALLS,
        failure_ratio=settings.GATEWAY_BREAKER_FAILURE_RATIO,
        open_seconds=settings.GATEWAY_BREAKER_OPEN_SECONDS,
        # A probe is one gateway call; a Razorpay charge is up to six.
        probe_seconds=6 * settings.GATEWAY_TIMEOUT_SECONDS,
    )
    return {name: CircuitBreaker(name, policy, time.monotonic, log_transition) for name in names}


def guard_gateways(gateways: Mapping[str, Gateway], breakers: Mapping[str, CircuitBreaker]) -> dict[str, Gateway]:
    from .gateways.resilience import GuardedGateway

    return {name: GuardedGateway(gw, breakers[name]) if name in breakers else gw for name, gw in gateways.items()}


def bootstrap(settings: Settings, *, pool_size: int | None = None) -> Container:
    """The parts of one process. `pool_size` caps its connections (the CLI and the relay need few)."""
    if settings.DATABASE_URL.startswith("sqlite"):
        engine = make_engine(settings.DATABASE_URL)
    elif pool_size is not None:
        engine = make_engine(settings.DATABASE_URL, pool_size=pool_size, max_overflow=pool_size)
    else:
        from .adapters.pool_metrics import InstrumentedQueuePool, instrument_pool

        size, overflow = settings.DB_POOL_SIZE, settings.DB_POOL_MAX_OVERFLOW
        engine = make_engine(
            settings.DATABASE_URL, poolclass=InstrumentedQueuePool, pool_size=size, max_overflow=overflow,
            pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        )
        instrument_pool(engine, size, overflow)
    return Container(settings=settings, engine=engine, session_factory=sessionmaker(engine, expire_on_commit=False))


def build_relay(
    settings: Settings, engine: Engine | None = None, *, producer_config: dict[str, Any] | None = None,
    delivery_timeout: float = 5.0, poll_interval: float = 0.005, idle_poll: float | None = None,
    binlog: bool | None = None, binlog_url: str | None = None, binlog_retry_max: float = 30.0,
    binlog_safety_poll: float = 10.0, relay_class: type[OutboxRelay] | None = None, holder: str | None = None,
    batch_size: int | None = None, lease_ttl: float = 5.0, max_backoff: float = 5.0,
    on_delivered: Callable[[Sequence[Delivered]], None] | None = None,
) -> OutboxRelay:
    """The outbox relay and its three adapters: the outbox store, the Kafka publisher, the binlog
    watcher (polling where there is no binary log). `relay_class`: a subclass, for tests."""
    from .adapters.binlog_watcher import RelayWaker
    from .adapters.kafka_publisher import KafkaPublisher
    from .adapters.outbox_metrics import relay_metrics
    from .adapters.outbox_store import SqlOutboxStore
    from .worker.relay import OutboxRelay

    engine = engine if engine is not None else make_engine(settings.DATABASE_URL, pool_size=2, max_overflow=2)
    store = SqlOutboxStore(engine)
    publisher = KafkaPublisher(
        settings.KAFKA_BOOTSTRAP_SERVERS, settings.EVENTS_TOPIC, partitions=settings.EVENTS_TOPIC_PARTITIONS,
        signing_key=settings.EVENT_SIGNING_KEY, signing_key_id=settings.EVENT_SIGNING_KEY_ID,
        producer_config=producer_config, delivery_timeout=delivery_timeout,
    )
    use_binlog = settings.RELAY_BINLOG if binlog is None else binlog
    waker = RelayWaker(
        (binlog_url or engine.url.render_as_string(hide_password=False)) if use_binlog and store.mysql else None,
        off_reason="RELAY_BINLOG is off" if not use_binlog else f"no binary log ({engine.dialect.name})",
        poll_interval=poll_interval, safety_poll=binlog_safety_poll, retry_max=binlog_retry_max,
        idle_poll=settings.RELAY_IDLE_POLL_SECONDS if idle_poll is None else idle_poll,
        on_mode=relay_metrics().set_wake_mode,
    )
    return (relay_class or OutboxRelay)(
        store, publisher, waker, settings, holder=holder, batch_size=batch_size, lease_ttl=lease_ttl,
        max_backoff=max_backoff, on_delivered=on_delivered,
    )
