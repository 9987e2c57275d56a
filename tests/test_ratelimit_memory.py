"""The in-process window counters give the same decisions as `limits`' own strategies, at the same instants."""

from __future__ import annotations

import random

import limits.storage.memory as limits_memory
import pytest
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

import kairos.ratelimit.limiters as ours
from kairos.ratelimit import MemoryCounters, MemoryWindow


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow"])
def test_same_decisions_as_limits(monkeypatch, window_type):
    clock = Clock(1_700_000_003.25)
    monkeypatch.setattr(ours.time, "time", clock.time)
    monkeypatch.setattr(limits_memory.time, "time", clock.time)
    limit, window = 5, 10
    mine = MemoryWindow(MemoryCounters(), window_type, limit, window)
    storage = MemoryStorage()
    try:
        strategy = (FixedWindowRateLimiter if window_type == "FixedWindow" else SlidingWindowCounterRateLimiter)(storage)
        item = RateLimitItemPerSecond(limit, window)
        rng = random.Random(7)
        for step in range(400):
            clock.now += rng.choice([0.0, 0.01, 0.3, 1.7, 4.0, 9.9])
            key = rng.choice(["a", "b"])
            decision = mine.hit(key)
            expected = strategy.hit(item, key)
            assert decision.allowed == expected, (step, clock.now, key)
            stats = strategy.get_window_stats(item, key)
            assert decision.remaining == stats.remaining, (step, clock.now, key)
    finally:
        storage.timer.cancel()


def test_expired_keys_are_swept():
    counters = MemoryCounters(max_keys=10)
    fixed = MemoryWindow(counters, "FixedWindow", 3, 1)
    for i in range(50):
        fixed.hit(f"k{i}")
    assert len(counters.fixed) <= 10
