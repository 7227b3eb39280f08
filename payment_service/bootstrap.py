"""The one place that picks the concrete parts (cosmicpython's bootstrap): engine, gateways, clock."""

from __future__ import annotations

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
        from .adapters.unit_of_work import SqlAlchemyUnitOfWork

        return SqlAlchemyUnitOfWork(self.session_factory)

    def gateways(self) -> dict[str, Any]:
        if self.gateway_overrides is not None:
            return self.gateway_overrides
        return self.cached("gateways", lambda: build_gateways(self.settings))

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

        return SweepPolicy(batch=self.settings.SWEEP_BATCH_SIZE, lease_seconds=self.settings.SWEEP_LEASE_SECONDS)

    def cached(self, name: str, build: Any) -> Any:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = build()
            return self._cache[name]

    def kafka_admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return self.cached(
            "kafka_admin",
            lambda: AdminClient(
                {"bootstrap.servers": self.settings.KAFKA_BOOTSTRAP_SERVERS, "socket.timeout.ms": 2000}
            ),
        )

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
        ),
        "razorpay": RazorpayGateway(
            key_id=settings.RAZORPAY_KEY_ID,
            key_secret=settings.RAZORPAY_KEY_SECRET,
            webhook_secret=settings.RAZORPAY_WEBHOOK_SECRET,
            api_base=settings.RAZORPAY_API_BASE,
            payout_account_number=settings.RAZORPAYX_ACCOUNT_NUMBER,
            timeout=settings.GATEWAY_TIMEOUT_SECONDS,
        ),
    }


def bootstrap(settings: Settings) -> Container:
    engine = make_engine(settings.DATABASE_URL)
    return Container(settings=settings, engine=engine, session_factory=sessionmaker(engine, expire_on_commit=False))
