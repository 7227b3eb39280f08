"""CPU slots (payment_service/cpu_slots.py) with real threads: at most `size` holders, first come first
served, requests back from a gateway before new ones, and a waiter that dies never takes a slot with it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from payment_service import cpu_slots
from payment_service.cpu_slots import CpuSlots

pytestmark = pytest.mark.unit


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


def waiting(slots: CpuSlots) -> int:
    return sum(len(q) for q in slots._waiting.values())


def test_at_most_size_requests_hold_a_slot_at_once() -> None:
    slots = CpuSlots(3)
    start = threading.Barrier(12)
    lock = threading.Lock()
    now = most = 0

    def request() -> None:
        nonlocal now, most
        start.wait(5)
        with slots.hold():
            with lock:
                now += 1
                most = max(most, now)
            time.sleep(0.01)
            with lock:
                now -= 1

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most == 3 and slots.free == 3


def test_waiters_are_served_in_order_and_those_back_from_a_gateway_first() -> None:
    slots = CpuSlots(1)
    order: list[str] = []
    slots.acquire()  # the main thread holds the only slot

    def new(name: str) -> None:
        with slots.hold():
            order.append(name)

    def resumed(name: str) -> None:
        slots.acquire()  # a request that holds a slot, then waits on its gateway
        try:
            with slots.outside():
                released.set()
                gateway_answered.wait(5)
            order.append(name)
        finally:
            slots.release()

    released, gateway_answered = threading.Event(), threading.Event()
    threads = []
    for n, name in enumerate(("new-1", "new-2"), start=1):
        threads.append(threading.Thread(target=new, args=(name,)))
        threads[-1].start()
        wait_until(lambda n=n: waiting(slots) == n)
    slots.release()  # new-1 runs, new-2 waits; then the gateway caller takes its turn after new-2
    threads.append(threading.Thread(target=resumed, args=("back-from-gateway",)))
    threads[-1].start()
    released.wait(5)
    slots.acquire()  # hold the slot again while the others line up behind
    threads.append(threading.Thread(target=new, args=("new-3",)))
    threads[-1].start()
    wait_until(lambda: waiting(slots) == 1)
    gateway_answered.set()
    wait_until(lambda: waiting(slots) == 2)
    slots.release()
    for t in threads:
        t.join(5)
    assert order == ["new-1", "new-2", "back-from-gateway", "new-3"]
    assert slots.free == 1 and not slots.held


def test_outside_without_a_slot_and_release_without_one_do_nothing() -> None:
    slots = CpuSlots(1)
    with slots.outside():
        assert slots.free == 1
    slots.release()
    assert slots.free == 1


class Killed(BaseException):
    """What gevent raises in a greenlet it kills (GreenletExit is a BaseException too)."""


class _DiesWhileWaiting(threading.Event):
    """An Event whose wait raises, as a greenlet killed while it waits for its turn would."""

    def __init__(self, *, after_handover: bool) -> None:
        super().__init__()
        self.after_handover = after_handover

    def wait(self, timeout: float | None = None) -> bool:
        if self.after_handover:
            super().wait(5)
        raise Killed("killed while waiting")


@pytest.mark.parametrize("after_handover", [False, True], ids=["before its turn", "after it was handed a slot"])
def test_a_waiter_killed_while_waiting_takes_no_slot_with_it(
    monkeypatch: pytest.MonkeyPatch, after_handover: bool
) -> None:
    slots = CpuSlots(1)
    slots.acquire()
    died = threading.Event()

    def dies() -> None:
        try:
            slots.acquire()
        except Killed:
            died.set()

    t = threading.Thread(target=dies)  # made before the patch: a thread's start waits on an Event of its own
    monkeypatch.setattr(cpu_slots.threading, "Event", lambda: _DiesWhileWaiting(after_handover=after_handover))
    t.start()
    wait_until(lambda: waiting(slots) == 1 or died.is_set())
    monkeypatch.undo()
    slots.release()  # hands the slot to the waiter if it is still in line
    t.join(5)
    assert died.is_set() and waiting(slots) == 0
    assert slots.free == 1  # the slot came back either way
    with slots.hold():
        assert slots.free == 0
