"""A circuit breaker: the state machine only (no I/O, no clock of its own, standard library only).

One breaker per gateway per process. It watches the outcomes of the most recent calls and, when
most of them failed (timeouts, connection failures, 5xx), opens: calls are refused at once for
`open_seconds` instead of waiting on a dead gateway. Then it half-opens and lets one call through
as a probe; the probe's success closes it, its failure opens it again.

A caller asks `allow()` before a call and gets a `Permit`, or None (refused: see `retry_after()`),
and reports the outcome with `record(permit, ...)` whatever happens. An outcome counts only in the
state it was permitted in (`Permit.generation`): a call that began before the breaker opened cannot
close it, and one that began before it closed cannot open it again.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(str, enum.Enum):
    CLOSED = "closed"  # calls go through; outcomes are counted
    OPEN = "open"  # calls are refused until open_seconds have passed
    HALF_OPEN = "half_open"  # one probe call goes through; the others are refused


# For a gauge: the higher, the worse.
STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


@dataclass(frozen=True)
class BreakerPolicy:
    window: int = 20  # the most recent calls that are looked at...
    window_seconds: float = 60.0  # ...of those made this recently
    min_calls: int = 10  # no verdict on fewer calls than this
    failure_ratio: float = 0.5  # open when at least this share of them failed
    open_seconds: float = 10.0  # how long it stays open before it lets a probe through
    # A probe that never reports (its caller died) stops blocking the next probe after this long.
    probe_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_calls < 1 or self.min_calls > self.window:
            raise ValueError("a breaker needs 1 <= min_calls <= window")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.open_seconds <= 0 or self.window_seconds <= 0 or self.probe_seconds <= 0:
            raise ValueError("breaker durations must be positive")


@dataclass(frozen=True)
class Permit:
    generation: int  # the state it was given in; an outcome from another state is not counted
    probe: bool = False


# (breaker name, from, to, why)
TransitionListener = Callable[[str, BreakerState, BreakerState, str], None]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        clock: Callable[[], float],
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._listeners: list[TransitionListener] = [on_transition] if on_transition else []
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=policy.window)  # (when, failed)
        self._opened_at = 0.0
        self._probe_since: float | None = None

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> BreakerState:
        """The state as a caller would meet it now (OPEN whose time is up reads as HALF_OPEN)."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._open_for(self._clock()) <= 0:
                return BreakerState.HALF_OPEN
            return self._state

    def retry_after(self) -> float:
        """Seconds until a call may be let through again (0: now)."""
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.OPEN:
                return max(0.0, self._open_for(now))
            if self._state is BreakerState.HALF_OPEN and self._probe_busy(now):
                # The probe decides soon; until it does, come back after about one open period.
                return self.policy.open_seconds
            return 0.0

    def allow(self) -> Permit | None:
        """A permit to call, or None when the call must be refused without being made."""
        transition = None
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.CLOSED:
                return Permit(self._generation)
            if self._state is BreakerState.OPEN:
                if self._open_for(now) > 0:
                    return None
                transition = self._move(BreakerState.HALF_OPEN, f"open for {self.policy.open_seconds:g} s: probing")
            if self._probe_busy(now):
                permit = None
            else:
                self._probe_since = now
                permit = Permit(self._generation, probe=True)
        self._announce(transition)
        return permit

    def record(self, permit: Permit, failed: bool | None) -> None:
        """The outcome of a permitted call: failed True (timeout, 5xx), False (the gateway answered),
        or None (neither: e.g. rate limited, or the call never reached the gateway)."""
        transition = None
        with self._lock:
            if permit.generation != self._generation:
                return
            now = self._clock()
            if self._state is BreakerState.HALF_OPEN and permit.probe:
                self._probe_since = None
                if failed is True:
                    transition = self._open(now, "the probe failed")
                elif failed is False:
                    transition = self._move(BreakerState.CLOSED, "the probe succeeded")
            elif self._state is BreakerState.CLOSED and failed is not None:
                self._outcomes.append((now, failed))
                transition = self._judge(now)
        self._announce(transition)

    # -- inside the lock ---------------------------------------------------------------------

    def _judge(self, now: float) -> tuple[BreakerState, BreakerState, str] | None:
        horizon = now - self.policy.window_seconds
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
        calls = len(self._outcomes)
        if calls < self.policy.min_calls:
            return None
        failures = sum(1 for _, failed in self._outcomes if failed)
        if failures < self.policy.failure_ratio * calls:
            return None
        return self._open(now, f"{failures} of the last {calls} calls failed")

    def _open(self, now: float, why: str) -> tuple[BreakerState, BreakerState, str]:
        self._opened_at = now
        return self._move(BreakerState.OPEN, why)

    def _move(self, to: BreakerState, why: str) -> tuple[BreakerState, BreakerState, str]:
        before = self._state
        self._state = to
        self._generation += 1
        self._outcomes.clear()
        self._probe_since = None
        return before, to, why

    def _open_for(self, now: float) -> float:
        return self._opened_at + self.policy.open_seconds - now

    def _probe_busy(self, now: float) -> bool:
        return self._probe_since is not None and now - self._probe_since < self.policy.probe_seconds

    # -- outside the lock ----------------------------------------------------------------------

    def _announce(self, transition: tuple[BreakerState, BreakerState, str] | None) -> None:
        if transition is None:
            return
        before, after, why = transition
        for listener in self._listeners:
            listener(self.name, before, after, why)
