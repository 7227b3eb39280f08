"""The one place that picks the concrete parts (cosmicpython's bootstrap): engine, gateways, clock."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from config import Settings


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
    return create_engine(url, **kwargs)


@functools.cache
def _unit_of_work_class() -> Any:
    from .adapters.unit_of_work import SqlAlchemyUnitOfWork

    return SqlAlchemyUnitOfWork


@dataclass
class Container:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    # Tests put fakes here; otherwise the real adapters are built from settings on first use.
    gateway_overrides: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cache: dict[str, Any] = field(default_factory=dict)

    def uow_factory(self) -> Any:
        # Called for every transaction (the webhook applier: one per event): the class is looked up
        # once, not imported on each call.
        return _unit_of_work_class()(self.session_factory)

    def gateways(self) -> dict[str, Any]:
        if self.gateway_overrides is not None:
            return self.gateway_overrides
        breakers = self.breakers()  # outside cached(): its lock is not reentrant
        return self.cached("gateways", lambda: guard_gateways(build_gateways(self.settings), breakers))

    def breakers(self) -> dict[str, Any]:
        """One circuit breaker per gateway, for this process (see gateways/resilience.py)."""
        return self.cached("breakers", lambda: build_breakers(self.settings, ["stripe", "razorpay"]))

    def payment_settings(self) -> Any:
        from .services.payments import PaymentSettings
        from .services.risk import RiskRules

        s = self.settings
        return self.cached(
            "payment_settings",
            lambda: PaymentSettings(
                RiskRules.from_settings(s),
                pending_3ds_ttl_seconds=s.PENDING_3DS_TTL_SECONDS,
                reconcile_after_seconds=s.RECONCILE_AFTER_SECONDS,
                replay_window_seconds=s.GATEWAY_REPLAY_WINDOW_SECONDS,
            ),
        )

    def refund_settings(self) -> Any:
        from .services.refunds import RefundSettings

        return RefundSettings(retry_after_seconds=self.settings.REFUND_RETRY_AFTER_SECONDS)

    def withdrawal_settings(self) -> Any:
        from .services.withdrawals import WithdrawalSettings

        s = self.settings
        return WithdrawalSettings(
            poll_after_seconds=s.PAYOUT_POLL_AFTER_SECONDS,
            retry_after_seconds=s.WITHDRAWAL_RETRY_AFTER_SECONDS,
            give_up_after_seconds=s.WITHDRAWAL_GIVE_UP_AFTER_SECONDS,
        )

    def apply_settings(self) -> Any:
        from .services.webhooks import ApplySettings

        return ApplySettings(self.payment_settings(), self.refund_settings(), self.withdrawal_settings())

    def sweep_policy(self) -> Any:
        from .services.lifecycle import SweepPolicy

        s = self.settings
        return SweepPolicy(
            batch=s.SWEEP_BATCH_SIZE, lease_seconds=s.SWEEP_LEASE_SECONDS, concurrency=s.SWEEP_CONCURRENCY
        )

    def cached(self, name: str, build: Any) -> Any:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = build()
            return self._cache[name]

    def close(self) -> None:
        self.engine.dispose()


def build_gateways(settings: Settings) -> dict[str, Any]:
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


# --- slow gateways ---
def build_breakers(settings: Settings, names: list[str]) -> dict[str, Any]:
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


def guard_gateways(gateways: dict[str, Any], breakers: dict[str, Any]) -> dict[str, Any]:
    from .gateways.resilience import GuardedGateway

    return {name: GuardedGateway(gw, breakers[name]) if name in breakers else gw for name, gw in gateways.items()}


# --- end slow gateways ---


def bootstrap(settings: Settings) -> Container:
    if settings.DATABASE_URL.startswith("sqlite"):
        engine = make_engine(settings.DATABASE_URL)
    else:
        from .adapters.pool_metrics import InstrumentedQueuePool, instrument_pool

        size, overflow = settings.DB_POOL_SIZE, settings.DB_POOL_MAX_OVERFLOW
        engine = make_engine(
            settings.DATABASE_URL, poolclass=InstrumentedQueuePool, pool_size=size, max_overflow=overflow,
            pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        )
        instrument_pool(engine, size, overflow)
    return Container(settings=settings, engine=engine, session_factory=sessionmaker(engine, expire_on_commit=False))
