"""A running API (`payment-service serve`, gunicorn) on a migrated MariaDB database and the broker."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import create_engine

from config.settings import DEV_JWT_SECRET
from gateway_sandbox import SandboxConfig
from gateway_sandbox.server import SandboxServer, free_port
from payment_service.adapters import migrate
from tests.support.processes import VENV_BIN, ServiceProcess

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def e2e_sandbox() -> Iterator[SandboxServer]:
    """The gateway sandbox the API under test talks to, in this process so tests can inspect it."""
    with SandboxServer(SandboxConfig(webhook_backoff_seconds=0.05)) as server:
        yield server


@pytest.fixture(scope="module")
def api_env(fresh_database_url: str, kafka_bootstrap: str, e2e_sandbox: SandboxServer) -> dict[str, str]:
    migrate.upgrade(fresh_database_url)
    return {
        "DATABASE_URL": fresh_database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STRIPE_API_BASE": e2e_sandbox.stripe_api_base,
        "RAZORPAY_API_BASE": e2e_sandbox.razorpay_api_base,
        "STRIPE_WEBHOOK_SECRET": e2e_sandbox.config.stripe_webhook_secret,
        "RAZORPAY_WEBHOOK_SECRET": e2e_sandbox.config.razorpay_webhook_secret,
        "LOG_LEVEL": "INFO",
        # High enough that only the rate-limit test, which sets its own, ever meets it.
        "RATE_LIMIT_USER": "100000/minute",
        "RATE_LIMIT_CLIENT": "100000/minute",
        "RISK_VELOCITY_MAX_ATTEMPTS": "1000",
        "RISK_VELOCITY_MAX_AMOUNT": "100000000000",
    }


def start_api(env: dict[str, str], log_dir: Path, workers: int = 2) -> tuple[ServiceProcess, str]:
    port = free_port()
    proc = ServiceProcess(
        [str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        env, REPO, log_dir / f"serve-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/healthz")
    return proc, url


@pytest.fixture(scope="module")
def api_url(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_api(api_env, tmp_path_factory.mktemp("serve"))
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def engine(api_env: dict[str, str]) -> Iterator[Any]:
    """An engine on the module's database, for assertions on what the service stored."""
    eng = create_engine(api_env["DATABASE_URL"])
    yield eng
    eng.dispose()


@contextmanager
def webhooks_to(api_url: str, sandbox: SandboxServer) -> Iterator[str]:
    """Point the sandbox's Stripe and Razorpay webhooks at a running API for the block."""
    sandbox.config.stripe_webhook_url = api_url + "/webhooks/stripe"
    sandbox.config.razorpay_webhook_url = api_url + "/webhooks/razorpay"
    try:
        yield api_url
    finally:
        sandbox.config.stripe_webhook_url = None
        sandbox.config.razorpay_webhook_url = None


def user_token(sub: str, *, exp_in: int = 3600, aud: str = "payment-service", secret: str = DEV_JWT_SECRET) -> str:
    return jwt.encode({"sub": sub, "aud": aud, "exp": int(time.time()) + exp_in}, secret, algorithm="HS256")


def user_headers(sub: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {user_token(sub)}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM_PATH)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
