"""Every setting comes from an environment variable, or from a file named by `<NAME>_FILE`.

The `_FILE` form is for mounted secrets (Kubernetes, Docker secrets): the file's content, with the
trailing newline stripped, is the value. A variable set both ways is a configuration error.
Secrets are never logged: `Settings.describe()` masks them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"
DEV_EVENT_SIGNING_KEY = "dev-only-event-signing-key"
DEV_AUDIT_HMAC_KEY = "dev-only-audit-hmac-key-change-me-0123456789"
DEV_CLIENT_SIGNING_MASTER_KEY = "dev-only-client-signing-master-key-0123456789"
SANDBOX_STRIPE_API_KEY = "sk_test_sandbox"
SANDBOX_STRIPE_WEBHOOK_SECRET = "whsec_sandbox_stripe"
SANDBOX_RAZORPAY_KEY_ID = "rzp_test_sandbox"
SANDBOX_RAZORPAY_KEY_SECRET = "sandbox_razorpay_key_secret"
SANDBOX_RAZORPAY_WEBHOOK_SECRET = "sandbox_razorpay_webhook_secret"


class ConfigError(ValueError):
    pass


def _secret(**kw: Any) -> Any:
    return field(metadata={"secret": True}, **kw)


@dataclass
class Settings:
    DATABASE_URL: str = "sqlite:///instance/payment-service.sqlite3"
    KAFKA_BOOTSTRAP_SERVERS: str = "127.0.0.1:9092"
    EVENTS_TOPIC: str = "payment.events"
    # --- relay ---
    EVENTS_TOPIC_PARTITIONS: int = 6  # used when the relay creates the topic; an existing topic is left as is
    RELAY_METRICS_PORT: int = 9102  # the relay's own Prometheus endpoint; 0 = off
    RELAY_BATCH_SIZE: int = 5000  # outbox rows per round (produced, then confirmed and marked together)
    RELAY_BINLOG: bool = True  # wake on commit from MySQL's binary log when the database allows it; else poll
    RELAY_IDLE_POLL_SECONDS: float = 1.0  # polling (no binlog): the slowest pace, reached when idle
    # --- end relay ---

    STRIPE_API_KEY: str = _secret(default=SANDBOX_STRIPE_API_KEY)
    STRIPE_WEBHOOK_SECRET: str = _secret(default=SANDBOX_STRIPE_WEBHOOK_SECRET)
    STRIPE_API_BASE: str | None = None
    RAZORPAY_KEY_ID: str = SANDBOX_RAZORPAY_KEY_ID
    RAZORPAY_KEY_SECRET: str = _secret(default=SANDBOX_RAZORPAY_KEY_SECRET)
    RAZORPAY_WEBHOOK_SECRET: str = _secret(default=SANDBOX_RAZORPAY_WEBHOOK_SECRET)
    RAZORPAY_API_BASE: str | None = None
    RAZORPAYX_ACCOUNT_NUMBER: str = "2323230041626905"
    GATEWAY_TIMEOUT_SECONDS: float = 10.0
    # --- slow gateways (issue 10) ---
    GATEWAY_MAX_CONNECTIONS: int = 1000  # keep-alive connections per gateway per worker process
    # A gateway's circuit breaker (per worker process) opens when at least RATIO of the last WINDOW calls
    # (made in the last WINDOW_SECONDS, and at least MIN_CALLS of them) timed out or answered 5xx; it stays
    # open OPEN_SECONDS, then lets one probe call through.
    GATEWAY_BREAKER_WINDOW: int = 20
    GATEWAY_BREAKER_WINDOW_SECONDS: float = 60.0
    GATEWAY_BREAKER_MIN_CALLS: int = 10
    GATEWAY_BREAKER_FAILURE_RATIO: float = 0.5
    GATEWAY_BREAKER_OPEN_SECONDS: float = 10.0
    # The database pool of each process: connections are held only inside short transactions. No overflow
    # by default: an overflow connection is opened for a burst and closed after it (with PyMySQL's TLS set-up,
    # ~20 ms of CPU each time); waiting for a pooled one is cheaper, and is on /metrics.
    DB_POOL_SIZE: int = 20
    DB_POOL_MAX_OVERFLOW: int = 0
    DB_POOL_TIMEOUT_SECONDS: float = 30.0
    # Requests of one API worker running on its CPU at once (payment_service/cpu_slots.py); the others
    # wait in line, and a request waiting on a gateway holds none. 0: no limit (every ready request runs).
    API_CPU_SLOTS: int = 2
    # --- end slow gateways ---

    JWT_SECRET: str | None = _secret(default=DEV_JWT_SECRET)
    JWT_PUBLIC_KEY: str | None = None
    JWT_AUDIENCE: str = "payment-service"
    JWT_ISSUER: str | None = None

    EVENT_SIGNING_KEY: str = _secret(default=DEV_EVENT_SIGNING_KEY)
    EVENT_SIGNING_KEY_ID: str = "dev-1"

    # --- audit trail and signed requests (issue 12) ---
    AUDIT_HMAC_KEY: str = _secret(default=DEV_AUDIT_HMAC_KEY)  # keys the audit rows' hash chain
    AUDIT_SEAL_INTERVAL_SECONDS: float = 1.0  # how often the worker chains new audit rows
    # Signing secrets of service clients are derived from this and a salt per secret (docs/auth.md).
    CLIENT_SIGNING_MASTER_KEY: str = _secret(default=DEV_CLIENT_SIGNING_MASTER_KEY)
    # --- end audit trail ---

    PENDING_3DS_TTL_SECONDS: int = 900
    # --- worker (issue 15) ---
    # The webhook applier runs back to back while events are due; this is how long it waits when none is,
    # doubling while none comes, up to WORKER_WEBHOOK_IDLE_MAX_SECONDS (idle: 4 queries a second, not 20).
    WORKER_WEBHOOK_INTERVAL_SECONDS: float = 0.1
    WORKER_WEBHOOK_IDLE_MAX_SECONDS: float = 0.5
    WORKER_APPLIER_THREADS: int = 4  # appliers per worker process (they never share an event)
    WEBHOOK_BATCH_SIZE: int = 100  # fresh events an applier claims at once, plus a tenth as many retries
    WEBHOOK_RETRY_FOR_SECONDS: float = 900.0  # an id of ours we do not hold is looked for this long, then FAILED
    # Gateway calls in flight at once per sweep run (one thread each): at ~300 ms a call, about 200 a
    # second, enough to expire 10,000 payments in a minute, and above a Stripe account's default limits
    # (docs/webhooks-and-jobs.md: lower it there; 429s are retried with backoff by the adapters).
    SWEEP_CONCURRENCY: int = 96
    # --- end worker ---
    WORKER_EXPIRY_INTERVAL_SECONDS: float = 15.0
    WORKER_RECONCILE_INTERVAL_SECONDS: float = 30.0
    RECONCILE_AFTER_SECONDS: int = 180
    IDEMPOTENCY_KEY_TTL_SECONDS: int = 86400
    IDEMPOTENCY_LOCK_SECONDS: float = 60.0  # also how long a request owns the record it is charging
    # While the gateway's idempotency key can still replay the original call (Stripe: 24 h), a stuck
    # payment is resolved by replaying the charge with the same key, never by a lookup that found nothing.
    GATEWAY_REPLAY_WINDOW_SECONDS: int = 23 * 3600
    SWEEP_BATCH_SIZE: int = 100  # records a sweep claims at once (one statement, SKIP LOCKED)
    SWEEP_LEASE_SECONDS: float = 300.0  # how long a sweep owns what it claimed
    # --- refunds and withdrawals ---
    WORKER_REFUND_INTERVAL_SECONDS: float = 30.0  # the PENDING-refund retry job
    REFUND_RETRY_AFTER_SECONDS: int = 60  # a PENDING refund untouched this long is retried / asked about
    WORKER_PAYOUT_INTERVAL_SECONDS: float = 60.0  # the payout poll and the REQUESTED-withdrawal retry
    PAYOUT_POLL_AFTER_SECONDS: int = 300  # a PROCESSING payout untouched this long is asked about
    WITHDRAWAL_RETRY_AFTER_SECONDS: int = 60  # a REQUESTED withdrawal untouched this long is retried
    WITHDRAWAL_GIVE_UP_AFTER_SECONDS: int = 3600  # a bank payout the gateway never saw is failed after this
    # --- end refunds and withdrawals ---
    OUTBOX_RETENTION_SECONDS: int = 7 * 86400
    # --- settlement reconciliation (issue 13, docs/reconciliation.md) ---
    RECONCILE_REPORT_DIR: str = "instance/reconciliation"  # where reconcile-day writes its reports
    RECONCILE_DAY_GATEWAYS: str = "stripe,razorpay"  # the gateways the worker reconciles each night
    # The worker reconciles a day once this long past its midnight (UTC): late 3-D Secure completions and
    # the PENDING sweep have settled by then. It looks every WORKER_RECONCILE_DAY_INTERVAL_SECONDS, so a
    # failed run is retried and a worker that was down catches up.
    RECONCILE_DAY_DELAY_SECONDS: int = 7200
    WORKER_RECONCILE_DAY_INTERVAL_SECONDS: float = 900.0
    # --- end settlement reconciliation ---
    # --- canonical amounts (issue 13, docs/amounts.md) ---
    CANONICAL_CURRENCY: str = "USD"  # every payment, refund and withdrawal also records its amount in this
    # Reference rates in the ECB's eurofxref-daily.xml format: an http(s) URL in production, a file path
    # (or file: URL) otherwise; empty: the sample shipped in config/fx/ (made-up rates, for dev and tests).
    FX_RATES_URL: str = ""
    FX_REFRESH_SECONDS: float = 4 * 3600.0
    # A table older than this is not used (the canonical amount stays null); 0: no limit (dev, the sample).
    # The ECB publishes on working days: over a weekend its newest table is ~3 days old, over Easter ~5.
    FX_MAX_AGE_SECONDS: float = 5 * 86400.0
    FX_FETCH_TIMEOUT_SECONDS: float = 10.0
    DISPLAY_LOCALE: str = "en_IN"  # the locale of `amount_display` in responses (Babel: symbol, grouping)
    # --- end canonical amounts ---

    RATE_LIMIT_USER: str = "120/minute"
    RATE_LIMIT_CLIENT: str = "1200/minute"
    RATE_LIMIT_STORAGE_URI: str = "memory://"

    RISK_MAX_AMOUNT: int = 20_000_000
    RISK_VELOCITY_MAX_ATTEMPTS: int = 10
    RISK_VELOCITY_WINDOW_SECONDS: int = 3600
    RISK_VELOCITY_MAX_AMOUNT: int = 50_000_000
    RISK_BLOCKED_BINS: str = ""
    RISK_BLOCKED_COUNTRIES: str = ""
    RISK_NEW_DEVICE_AMOUNT: int = 1_000_000
    RISK_NEW_DEVICE_ACTION: str = "require_3ds"

    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: str = "json"
    TESTING: bool = False

    @classmethod
    def secret_names(cls) -> set[str]:
        return {f.name for f in fields(cls) if f.metadata.get("secret")}

    def describe(self) -> dict[str, Any]:
        """The settings with every secret masked, safe to log or print."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif f.name == "DATABASE_URL" and isinstance(value, str):
                value = _mask_url_password(value)
            out[f.name] = value
        return out


def _mask_url_password(url: str) -> str:
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def _convert(raw: str, default: Any, name: str) -> Any:
    kind = type(default)
    try:
        if isinstance(default, bool):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}") from None
    return raw


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if env is None else env
    settings = Settings()
    for f in fields(settings):
        name = f.name
        raw = env.get(name)
        file_name = env.get(name + "_FILE")
        if raw is not None and file_name is not None:
            raise ConfigError(f"{name} and {name}_FILE are both set; set one")
        if file_name is not None:
            try:
                raw = Path(file_name).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from None
        if raw is not None:
            setattr(settings, name, _convert(raw, getattr(settings, name), name))
    for name, value in overrides.items():
        if not hasattr(settings, name):
            raise ConfigError(f"unknown setting {name}")
        setattr(settings, name, value)
    if settings.JWT_PUBLIC_KEY and env.get("JWT_SECRET") is None and env.get("JWT_SECRET_FILE") is None:
        settings.JWT_SECRET = None  # RS256 configured; no HS256 fallback secret
    # --- relay ---
    if settings.EVENTS_TOPIC_PARTITIONS < 1:
        raise ConfigError("EVENTS_TOPIC_PARTITIONS must be at least 1")
    if settings.RELAY_BATCH_SIZE < 1:
        raise ConfigError("RELAY_BATCH_SIZE must be at least 1")
    if not 0 <= settings.RELAY_METRICS_PORT <= 65535:
        raise ConfigError("RELAY_METRICS_PORT must be a port number, or 0 for off")
    if settings.RELAY_IDLE_POLL_SECONDS <= 0:
        raise ConfigError("RELAY_IDLE_POLL_SECONDS must be positive")
    # --- end relay ---
    # --- slow gateways ---
    if not 1 <= settings.GATEWAY_BREAKER_MIN_CALLS <= settings.GATEWAY_BREAKER_WINDOW:
        raise ConfigError("GATEWAY_BREAKER_MIN_CALLS must be from 1 to GATEWAY_BREAKER_WINDOW")
    if not 0 < settings.GATEWAY_BREAKER_FAILURE_RATIO <= 1:
        raise ConfigError("GATEWAY_BREAKER_FAILURE_RATIO must be above 0 and at most 1")
    if settings.GATEWAY_BREAKER_OPEN_SECONDS <= 0 or settings.GATEWAY_BREAKER_WINDOW_SECONDS <= 0:
        raise ConfigError("GATEWAY_BREAKER_OPEN_SECONDS and GATEWAY_BREAKER_WINDOW_SECONDS must be positive")
    if settings.GATEWAY_MAX_CONNECTIONS < 1 or settings.DB_POOL_SIZE < 1 or settings.DB_POOL_MAX_OVERFLOW < 0:
        raise ConfigError("GATEWAY_MAX_CONNECTIONS and DB_POOL_SIZE must be at least 1, DB_POOL_MAX_OVERFLOW at least 0")
    if settings.API_CPU_SLOTS < 0:
        raise ConfigError("API_CPU_SLOTS must be 0 (no limit) or more")
    # --- end slow gateways ---
    # --- worker ---
    if min(settings.WORKER_APPLIER_THREADS, settings.WEBHOOK_BATCH_SIZE, settings.SWEEP_CONCURRENCY) < 1:
        raise ConfigError("WORKER_APPLIER_THREADS, WEBHOOK_BATCH_SIZE and SWEEP_CONCURRENCY must be at least 1")
    if settings.WORKER_WEBHOOK_INTERVAL_SECONDS <= 0:
        raise ConfigError("WORKER_WEBHOOK_INTERVAL_SECONDS must be positive")
    # --- end worker ---
    # --- canonical amounts ---
    if len(settings.CANONICAL_CURRENCY) != 3 or not settings.CANONICAL_CURRENCY.isalpha() or (
        not settings.CANONICAL_CURRENCY.isupper()
    ):
        raise ConfigError("CANONICAL_CURRENCY must be an ISO 4217 code in capitals, such as USD")
    if settings.FX_REFRESH_SECONDS <= 0 or settings.FX_FETCH_TIMEOUT_SECONDS <= 0 or settings.FX_MAX_AGE_SECONDS < 0:
        raise ConfigError("FX_REFRESH_SECONDS and FX_FETCH_TIMEOUT_SECONDS must be positive, FX_MAX_AGE_SECONDS >= 0")
    _check_locale(settings.DISPLAY_LOCALE)
    # --- end canonical amounts ---
    # --- audit trail ---
    if len(settings.AUDIT_HMAC_KEY.encode()) < 32 or len(settings.CLIENT_SIGNING_MASTER_KEY.encode()) < 32:
        raise ConfigError("AUDIT_HMAC_KEY and CLIENT_SIGNING_MASTER_KEY must be at least 32 bytes")
    if settings.AUDIT_SEAL_INTERVAL_SECONDS <= 0:
        raise ConfigError("AUDIT_SEAL_INTERVAL_SECONDS must be positive")
    # --- end audit trail ---
    if settings.RISK_NEW_DEVICE_ACTION not in {"require_3ds", "refuse", "allow"}:
        raise ConfigError("RISK_NEW_DEVICE_ACTION must be require_3ds, refuse or allow")
    return settings


def _check_locale(name: str) -> None:
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(name)
    except (UnknownLocaleError, ValueError, TypeError):
        raise ConfigError(f"DISPLAY_LOCALE: unknown locale {name!r} (a CLDR name such as en_IN or en_US)") from None
