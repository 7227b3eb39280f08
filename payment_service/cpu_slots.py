"""CPU slots: how many requests of one API worker run on its CPU at once; the rest wait in line.

Under the gevent worker every request is a greenlet, and a worker runs whichever greenlet is ready:
each request that comes back from a database round trip or a gateway call goes to the end of the
loop's queue, behind every other request of the worker. When the worker's core is busy that is
processor sharing: a burst (the answers of a gateway that stalled, new requests arriving together)
slows every request in flight at once, and the slowest wait the whole burst out several times, once
per round trip. Measured at 300 ms of gateway latency and ~90 % of this machine's CPU, that is what
made the p99 three to four times the p50 (docs/benchmarks.md, issue 10).

So a request takes a slot before it runs (`hold`, for the whole request) and gives it back while it
waits on a gateway (`outside`, around every gateway call), and only `API_CPU_SLOTS` requests of a
worker hold one at a time; the others wait in line, first come first served. A request coming back
from its gateway call is served before new ones: it has the least work left, and finishing it first
is what keeps the tail short. Waiting on the gateway costs no slot, so a thousand charges can be in
flight; the database pool (`DB_POOL_SIZE`, 20) is never the queue, since only slot holders use it.

Threads see the same gate (the worker's sweeps call gateways outside any request: `outside` is then a
no-op). Slots are per process: each gunicorn worker has its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge, Histogram

SLOT_WAITERS = Gauge(
    "api_cpu_slot_waiters", "Requests waiting for a CPU slot of their worker right now", ["phase"],
    multiprocess_mode="livesum",
)
SLOT_WAIT_SECONDS = Histogram(
    "api_cpu_slot_wait_seconds", "Time a request waited for a CPU slot, when it had to wait", ["phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

_NEW, _RESUMED = "new", "resumed"


class CpuSlots:
    """`size` slots, handed out first come first served, requests back from a gateway first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("at least one slot")
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[threading.Event]] = {_RESUMED: deque(), _NEW: deque()}
        self._local = threading.local()  # greenlet-local under gevent's patching

    @property
    def held(self) -> bool:
        """Whether the calling request (greenlet or thread) holds a slot."""
        return bool(getattr(self._local, "held", False))

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the block (a request): waits its turn behind the requests already waiting."""
        self.acquire(_NEW)
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def outside(self) -> Iterator[None]:
        """The slot given back for the block (a gateway call), taken back after it ahead of new requests."""
        if not self.held:
            yield
            return
        self.release()
        try:
            yield
        finally:
            self.acquire(_RESUMED)

    def acquire(self, phase: str = _NEW) -> None:
        with self._lock:
            ahead = self._waiting[_RESUMED] or (phase == _NEW and self._waiting[_NEW])
            if self._free and not ahead:
                self._free -= 1
                self._local.held = True
                return
            turn = threading.Event()
            self._waiting[phase].append(turn)
        SLOT_WAITERS.labels(phase).inc()
        started = time.perf_counter()
        try:
            turn.wait()
        except BaseException:  # killed while waiting: leave the line, or pass on a slot it was given
            with self._lock:
                if turn in self._waiting[phase]:
                    self._waiting[phase].remove(turn)
                    raise
            self._hand_on()
            raise
        finally:
            SLOT_WAITERS.labels(phase).dec()
            SLOT_WAIT_SECONDS.labels(phase).observe(time.perf_counter() - started)
        self._local.held = True

    def release(self) -> None:
        if not self.held:
            return
        self._local.held = False
        self._hand_on()

    def _hand_on(self) -> None:
        with self._lock:
            for phase in (_RESUMED, _NEW):
                if self._waiting[phase]:
                    self._waiting[phase].popleft().set()  # the slot goes to the waiter as it is
                    return
            self._free += 1

    @property
    def free(self) -> int:
        with self._lock:
            return self._free


_SLOTS: CpuSlots | None = None


def install(size: int) -> CpuSlots | None:
    """This process's slots (the API worker's app factory calls it); 0: no gate."""
    global _SLOTS
    _SLOTS = CpuSlots(size) if size > 0 else None
    return _SLOTS


@contextmanager
def outside_slot() -> Iterator[None]:
    """Around a wait on something outside this process (a gateway call): no slot held meanwhile."""
    slots = _SLOTS
    if slots is None:
        yield
        return
    with slots.outside():
        yield
