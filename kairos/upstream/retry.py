"""A route's retry policy, its retry budget, and the backoff between attempts.

Compiled once per route from its `retry` block; a route without one has no
policy and makes exactly one attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kairos.config.models import RetryConfig
from kairos.observability.metrics import RETRIES

# A retry needs at least this much of the route's deadline left: uvloop's timers fire up
# to a millisecond early, and an attempt with a sliver of time left would reach the
# upstream only to be cut off (seen: a fifth attempt where 1000 ms / 300 ms allows four).
MIN_ATTEMPT_S = 0.01

# RFC 9110 9.2.2: retrying these cannot repeat a side effect the client did not ask for twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_REASONS = ("status", "connect", "connect_timeout", "timeout", "reset", "protocol", "overloaded")


def backoff_delay(n: int, initial_s: float, multiplier: float, max_s: float, jitter: bool,
                  rand: Callable[[], float] = random.random) -> float:
    """Delay before retry `n` (from 0): min(initial * multiplier^n, max), then full jitter."""
    try:
        delay = min(initial_s * multiplier**n, max_s)
    except OverflowError:
        delay = max_s
    return delay * rand() if jitter else delay


class RetryBudget:
    """Envoy's retry budget: retries in flight at most `budget_percent` of the route's
    requests in flight, but `min_retry_concurrency` retries are always allowed."""

    __slots__ = ("fraction", "min_concurrency", "requests", "retries")

    def __init__(self, budget_percent: float, min_retry_concurrency: int) -> None:
        self.fraction = budget_percent / 100
        self.min_concurrency = min_retry_concurrency
        self.requests = 0  # requests in flight on the route (with a retry policy)
        self.retries = 0  # retries in flight (from the decision to retry until that attempt ends)

    def try_acquire(self) -> bool:
        limit = self.requests * self.fraction
        if self.retries < self.min_concurrency or self.retries + 1 <= limit:
            self.retries += 1
            return True
        return False

    def release(self) -> None:
        self.retries -= 1


class RetryPolicy:
    __slots__ = (
        "max_retries",
        "initial_s",
        "max_s",
        "multiplier",
        "jitter",
        "statuses",
        "on_connection_error",
        "non_idempotent",
        "buffer_bytes",
        "per_try_s",
        "budget",
        "counters",
        "rand",
    )

    def __init__(self, config: RetryConfig, route_name: str, rand: Callable[[], float] = random.random) -> None:
        self.max_retries = config.max_retries
        self.initial_s = config.initial_backoff_ms / 1000
        self.max_s = config.max_backoff_ms / 1000
        self.multiplier = config.backoff_multiplier
        self.jitter = config.jitter == "full"
        self.statuses = frozenset(config.retry_on_status_codes)
        self.on_connection_error = config.retry_on_connection_error
        self.non_idempotent = config.retry_non_idempotent
        self.buffer_bytes = config.retry_buffer_bytes
        self.per_try_s = config.per_try_timeout_ms / 1000 if config.per_try_timeout_ms else None
        self.budget = RetryBudget(config.budget_percent, config.min_retry_concurrency)
        self.counters = {reason: RETRIES.labels(route_name, reason) for reason in RETRY_REASONS}
        self.rand = rand

    def delay(self, n: int) -> float:
        return backoff_delay(n, self.initial_s, self.multiplier, self.max_s, self.jitter, self.rand)

    def may_retry_method(self, method: str) -> bool:
        return self.non_idempotent or method in IDEMPOTENT_METHODS
