"""A running API (`payment-service serve`, gunicorn) on a migrated MariaDB database and the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from payment_service.adapters import migrate
from payment_service.gateways.sandbox.server import free_port
from tests.support.processes import VENV_BIN, ServiceProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api_env(fresh_database_url: str, kafka_bootstrap: str) -> dict[str, str]:
    migrate.upgrade(fresh_database_url)
    return {
        "DATABASE_URL": fresh_database_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def api_url(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServiceProcess(
        [str(VENV_BIN / "payment-service"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        api_env, REPO, log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(url + "/healthz")
        yield url
    finally:
        proc.stop()
