"""The relay's parts that need nothing outside the process: id runs for marking, the wake-up schedule."""

from __future__ import annotations

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
    waker.found_rows()
    assert waker.idle_delay() == 0.005
    assert waker.mode == "polling"


def test_a_wake_up_makes_an_empty_claim_look_again_shortly() -> None:
    # The binary log is written a moment before the transaction is visible: an empty claim right after
    # a wake-up is not the end of it.
    waker = RelayWaker(None, poll_interval=0.005, idle_poll=1.0)
    assert not waker.take()
    waker.flag.set()
    assert waker.take() and not waker.take()
    rechecks = [waker.idle_delay() for _ in range(6)]
    assert rechecks == sorted(rechecks) and sum(rechecks) < 0.25
    assert waker.idle_delay() == 0.005  # then the ordinary schedule (polling here)
