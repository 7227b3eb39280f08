"""The FX rate provider against a feed over HTTP (a local server in the ECB's format): it loads in the
background, a caller never waits for it, and a failing feed keeps the table in use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from payment_service.adapters.fx_rates import SHIPPED_RATES, CanonicalAmounts, EcbRates
from tests.unit.test_fx import ecb_doc


class Feed:
    """What the local feed answers: a status and a body, optionally held until `release` is set."""

    def __init__(self) -> None:
        self.status = 200
        self.body = SHIPPED_RATES.read_bytes()
        self.hold: threading.Event | None = None
        self.requests = 0


@pytest.fixture
def feed() -> Iterator[tuple[Feed, str]]:
    state = Feed()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests += 1
            if state.hold is not None:
                state.hold.wait(30)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/stats/eurofxref/eurofxref-daily.xml"
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_feed_loads_in_the_background_and_callers_never_wait(feed: tuple[Feed, str]) -> None:
    state, url = feed
    state.hold = threading.Event()  # the feed hangs until the test lets it answer
    ticks = Ticks()
    rates = EcbRates(url, refresh_seconds=3600, timeout_seconds=30, monotonic=ticks)
    canonical = CanonicalAmounts(rates, "USD", max_age_seconds=0)
    # While the feed hangs, callers get their answer at once: no table yet, so no canonical amount.
    assert rates.table() is None
    assert canonical(10_000, "INR", datetime.now(UTC)) is None
    assert rates.table() is None
    assert state.requests <= 1  # one refresh in flight, not one per caller
    state.hold.set()
    rates.wait_idle(30)
    table = rates.table()
    assert table is not None and table.rates["USD"] == Decimal("1.0520")
    got = canonical(10_000, "INR", datetime.now(UTC))
    assert got is not None and (got.amount, got.currency) == (118, "USD")
    assert state.requests == 1


def test_a_failing_feed_keeps_the_table_in_use_and_a_new_one_replaces_it(feed: tuple[Feed, str]) -> None:
    state, url = feed
    ticks = Ticks()
    rates = EcbRates(url, refresh_seconds=3600, timeout_seconds=30, monotonic=ticks)
    rates.table()
    rates.wait_idle(30)
    first = rates.table()
    assert first is not None
    for status, body in ((503, b"down for maintenance"), (200, b"<html>not the feed</html>")):
        state.status, state.body = status, body
        ticks.t += 3600
        rates.table()
        rates.wait_idle(30)
        assert rates.table() is first
    state.status, state.body = 200, ecb_doc(day="2026-12-01", usd="1.0600").encode()
    ticks.t += 3600
    rates.table()
    rates.wait_idle(30)
    newer = rates.table()
    assert newer is not None and newer.rates["USD"] == Decimal("1.0600")
