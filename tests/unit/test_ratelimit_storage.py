"""`memory://` rate-limit counters (api/ratelimit.py): the same counts as limits' MemoryStorage, with
ended windows swept on each hit instead of by a 10 ms timer started after hits."""

from __future__ import annotations

import time

import pytest
from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.storage import memory as limits_memory
from limits.strategies import FixedWindowRateLimiter

from payment_service.api import create_app
from payment_service.api.ratelimit import SweptMemoryStorage, limiter, storage_uri

from .fakes import Seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Seconds:
    c = Seconds(start=1_000_000.0)
    monkeypatch.setattr(time, "time", c)  # both modules read time.time() at each call
    return c


def test_memory_uri_is_served_by_the_swept_storage() -> None:
    assert storage_uri("memory://") == "payment-service-memory://"
    assert storage_uri("redis://cache:6379/2") == "redis://cache:6379/2"
    assert storage_uri("memcached://m:11211") == "memcached://m:11211"
    assert isinstance(storage_from_string(storage_uri("memory://")), SweptMemoryStorage)


def test_the_app_counts_in_the_swept_storage(tmp_path) -> None:
    app = create_app(DATABASE_URL=f"sqlite:///{tmp_path}/t.sqlite3", TESTING=True)
    with app.app_context():
        assert isinstance(limiter().storage, SweptMemoryStorage)


def test_same_decisions_as_limits_memory_storage(clock: Seconds) -> None:
    """A fixed window of 3 per minute, hit by two callers over three minutes: both stores agree."""
    limit = parse("3/minute")
    swept, plain = FixedWindowRateLimiter(SweptMemoryStorage()), FixedWindowRateLimiter(MemoryStorage())
    decisions: list[tuple[bool, bool]] = []
    for step in range(36):
        clock.t += 5.0
        for caller in ("alice", "bob") if step % 3 else ("alice",):
            decisions.append((swept.hit(limit, caller), plain.hit(limit, caller)))
    assert all(a == b for a, b in decisions)
    assert {a for a, _ in decisions} == {True, False}  # the limit was reached, and windows started again


def test_ended_windows_are_swept_without_being_read(clock: Seconds) -> None:
    storage = SweptMemoryStorage()
    storage.incr("quiet", 60)
    storage.incr("busy", 60)
    clock.t += 30.0
    storage.incr("busy", 60)
    assert set(storage.expirations) == {"quiet", "busy"}  # both windows still open
    clock.t += 31.0  # "quiet"'s window (and "busy"'s, started with it) has ended
    storage.incr("other", 60)
    assert set(storage.expirations) == {"other"} and set(storage.storage) == {"other"}
    assert storage.get("busy") == 0


def test_a_longer_window_holds_back_the_sweep_not_the_count(clock: Seconds) -> None:
    """Windows are swept front to back: one still open stops the sweep; a read still sees 0."""
    storage = SweptMemoryStorage()
    storage.incr("hourly", 3600)
    storage.incr("minute", 60)
    clock.t += 61.0
    storage.incr("next", 60)
    assert list(storage.expirations) == ["hourly", "minute", "next"]  # behind "hourly", not swept yet
    assert storage.get("minute") == 0  # but its window has ended: counted from 0 again
    assert storage.incr("minute", 60) == 1
    clock.t += 3600.0
    storage.incr("later", 60)
    assert list(storage.expirations) == ["later"]


def test_no_timer_is_started_by_a_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SweptMemoryStorage()  # limits starts one 10 ms timer when the store is made
    started: list[object] = []

    class CountingTimer:
        def __init__(self, *args: object, **kwargs: object) -> None:
            started.append(self)

        def start(self) -> None:
            pass

        def is_alive(self) -> bool:
            return False

    monkeypatch.setattr(limits_memory.threading, "Timer", CountingTimer)
    for i in range(200):
        storage.incr(f"caller-{i % 7}", 60)
        storage.get(f"caller-{i % 7}")
    assert started == []
    # The plain store, by contrast, starts one whenever none is running.
    plain = MemoryStorage()
    plain.timer = CountingTimer()  # a timer that has run its course
    started.clear()
    plain.incr("k", 60)
    assert len(started) == 1
