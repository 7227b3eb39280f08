"""Fixtures for the adapter tests: one gateway sandbox per session, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway_sandbox import SandboxConfig
from gateway_sandbox.server import SandboxServer


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(webhook_backoff_seconds=0.05)) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> SandboxServer:
    sandbox_server.sandbox.reset()
    return sandbox_server
