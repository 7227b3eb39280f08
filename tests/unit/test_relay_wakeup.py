"""The relay's parts that need nothing outside the process: id runs for marking, the wake-up schedule."""

from __future__ import annotations

import pytest

from payment_service.adapters import binlog_watcher
from payment_service.adapters.binlog_watcher import RelayWaker
from payment_service.adapters.outbox_store import id_ranges


def test_id_ranges() -> None:
    assert id_ranges([]) == []
    assert id_ranges([5]) == [(5, 5)]
    assert id_ranges([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 7), (9, 10)]


def test_polling_backs_off_to_the_idle_pace_and_is_fast_again_while_rows_come() -> None:
    waker = RelayWaker(None, off_reason="sqlite", poll_interval=0.005, idle_poll=1.0)
    waker.start()
    delays = [waker.idle_delay() for _ in range(10)]
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0]
    waker.found_rows(1)
    assert waker.idle_delay() == 0.005
    assert waker.mode == "polling"


class FakeWatcher:
    """Stands for a streaming BinlogWatcher: what the waker asks of it."""

    def __init__(self) -> None:
        self.active, self.paused, self.calls = True, False, []

    def pause(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume(self) -> None:
        self.paused = False
        self.calls.append("resume")


def test_a_wake_up_makes_an_empty_claim_look_again_shortly() -> None:
    # The binary log is written a moment before the transaction is visible: an empty claim right after
    # a wake-up is not the end of it.
    waker = RelayWaker("mysql+pymysql://u@h/db", poll_interval=0.005, idle_poll=1.0, safety_poll=10.0)
    waker.watcher = FakeWatcher()  # type: ignore[assignment]
    assert not waker.take()
    waker.flag.set()
    assert waker.take() and not waker.take()
    rechecks = [waker.idle_delay() for _ in range(6)]
    assert rechecks == sorted(rechecks) and sum(rechecks) < 0.25
    assert waker.idle_delay() == 10.0  # then the last resort: commits wake it
    waker.flag.set()
    assert waker.take()
    assert [waker.idle_delay() for _ in range(2)] == rechecks[:2]
    waker.found_rows(1)  # progress: the series starts again
    assert waker.idle_delay() == rechecks[0]


def test_busy_stops_the_binlog_stream_and_polls_then_idle_follows_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(binlog_watcher.time, "monotonic", lambda: now[0])
    waker = RelayWaker("mysql+pymysql://u@h/db", poll_interval=0.005, idle_poll=1.0, safety_poll=10.0,
                       busy_rate=500.0, busy_window=0.25)
    watcher = FakeWatcher()
    waker.watcher = watcher  # type: ignore[assignment]
    assert waker.mode == "binlog" and waker.listening and waker.idle_delay() == 10.0

    for _ in range(10):  # 400 rows/s: a commit wakes it each time, the stream stays
        now[0] += 0.025
        waker.found_rows(10)
    assert watcher.calls == [] and waker.listening

    for _ in range(10):  # 1,200 rows/s: a look 5 ms later finds rows anyway
        now[0] += 0.025
        waker.found_rows(30)
    assert watcher.calls == ["pause"] and not waker.listening and waker.mode == "binlog"
    assert waker.pauses == 1
    waker.flag.set()  # the last events read before the pause: no rechecks, they would only slow the polling
    assert waker.take()
    assert [waker.idle_delay() for _ in range(3)] == [0.005, 0.01, 0.02]  # it polls
    waker.found_rows(30)
    assert waker.idle_delay() == 0.005  # rows again: fast polling again, still paused
    assert watcher.calls == ["pause"]

    delays = [waker.idle_delay() for _ in range(3)]  # the 4th empty look in a row: follow the log again
    assert delays == [0.01, 0.02, 10.0] and watcher.calls == ["pause", "resume"] and waker.listening


def test_a_busy_spell_that_slows_down_follows_the_binlog_again(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(binlog_watcher.time, "monotonic", lambda: now[0])
    waker = RelayWaker("mysql+pymysql://u@h/db", busy_rate=500.0, busy_window=0.25)
    watcher = FakeWatcher()
    waker.watcher = watcher  # type: ignore[assignment]
    for rows in (200, 200, 50, 50):  # 800 rows/s, then 200 rows/s (below half of 500) over a window each
        now[0] += 0.25
        waker.found_rows(rows)
    assert watcher.calls == ["pause", "resume"] and waker.listening
