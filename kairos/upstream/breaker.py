"""The circuit breaker, one per backend.

Closed -> Open after `failure_threshold` consecutive failures; Open -> Half-open
once `reset_timeout_ms` has passed (checked lazily, when somebody asks); in
Half-open at most `half_open_max_requests` probes run at a time,
`success_threshold` successes close it, any failure reopens it.

The request path calls, per attempt:

    gen = breaker.acquire()          # after the balancer chose this backend
    ... breaker.success(gen) | breaker.failure(gen) | breaker.release(gen)

`gen` is the breaker's generation (bumped on every transition): a result that
arrives after the state changed under it (a slow request started before the
breaker opened) is ignored instead of being counted against the new state.
The clock is injectable, so the unit tests drive it without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from kairos.config.models import CircuitBreakerConfig
from kairos.observability.logging import log_event
from kairos.observability.metrics import BREAKER_STATE, BREAKER_TRANSITIONS

CLOSED = 0
OPEN = 1
HALF_OPEN = 2
STATE_NAMES = ("closed", "open", "half_open")


class CircuitBreaker:
    __slots__ = (
        "name",
        "state",
        "generation",
        "failures",
        "successes",
        "probes",
        "opened_at",
        "failure_threshold",
        "success_threshold",
        "reset_timeout_s",
        "half_open_max",
        "failure_statuses",
        "clock",
        "_gauge",
        "_transitions",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        metrics: bool = True,
    ) -> None:
        self.name = name
        self.clock = clock
        self.state = CLOSED
        self.generation = 0
        self.failures = 0
        self.successes = 0
        self.probes = 0
        self.opened_at = 0.0
        self.configure(config)
        if metrics:
            self._gauge = BREAKER_STATE.labels(name)
            self._gauge.set(CLOSED)
            self._transitions = tuple(BREAKER_TRANSITIONS.labels(name, s) for s in STATE_NAMES)
        else:
            self._gauge = None
            self._transitions = None

    def configure(self, config: CircuitBreakerConfig) -> None:
        """Apply a (reloaded) config, keeping the current state."""
        self.failure_threshold = config.failure_threshold
        self.success_threshold = config.success_threshold
        self.reset_timeout_s = config.reset_timeout_ms / 1000
        self.half_open_max = config.half_open_max_requests
        self.failure_statuses = frozenset(config.failure_status_codes)

    # ------------------------------------------------------------------ asking
    def can_pass(self) -> bool:
        """Would a request be let through now? (May move Open -> Half-open; takes no slot.)"""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if self.clock() - self.opened_at < self.reset_timeout_s:
                return False
            self._move(HALF_OPEN)
        return self.probes < self.half_open_max

    def acquire(self) -> int:
        """Take a slot for the chosen backend (a probe slot in Half-open); returns the generation."""
        if self.state == HALF_OPEN:
            self.probes += 1
        return self.generation

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 if it would now)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.reset_timeout_s - self.clock())

    # ------------------------------------------------------------------ results
    def success(self, gen: int) -> None:
        if gen != self.generation:
            return
        state = self.state
        if state == CLOSED:
            self.failures = 0
        elif state == HALF_OPEN:
            self.probes -= 1
            self.successes += 1
            if self.successes >= self.success_threshold:
                self._move(CLOSED)

    def failure(self, gen: int) -> None:
        if gen != self.generation:
            return
        state = self.state
        if state == CLOSED:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._move(OPEN)
        elif state == HALF_OPEN:
            self._move(OPEN)

    def release(self, gen: int) -> None:
        """The attempt ended without a verdict (client went away): free its probe slot."""
        if gen == self.generation and self.state == HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def record_status(self, gen: int, status: int) -> None:
        if status in self.failure_statuses:
            self.failure(gen)
        else:
            self.success(gen)

    # ------------------------------------------------------------------ transitions
    def _move(self, to: int) -> None:
        previous = self.state
        self.state = to
        self.generation += 1
        self.failures = 0
        self.successes = 0
        self.probes = 0
        if to == OPEN:
            self.opened_at = self.clock()
        if self._gauge is not None:
            self._gauge.set(to)
            self._transitions[to].inc()
        log_event(
            "circuit_breaker",
            30 if to == OPEN else 20,
            backend=self.name,
            **{"from": STATE_NAMES[previous], "to": STATE_NAMES[to]},
        )

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name}, {STATE_NAMES[self.state]})"


class NoBreaker:
    """A route with `circuit_breaker.enabled: false`: always passes, records nothing."""

    __slots__ = ()
    state = CLOSED
    generation = 0

    def can_pass(self) -> bool:
        return True

    def acquire(self) -> int:
        return 0

    def retry_after_s(self) -> float:
        return 0.0

    def success(self, gen: int) -> None:
        pass

    def failure(self, gen: int) -> None:
        pass

    def release(self, gen: int) -> None:
        pass

    def record_status(self, gen: int, status: int) -> None:
        pass


NO_BREAKER = NoBreaker()


def retry_after_header(seconds: float) -> tuple[bytes, bytes]:
    return (b"retry-after", str(max(1, math.ceil(seconds))).encode())
