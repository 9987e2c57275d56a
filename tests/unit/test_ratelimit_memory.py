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
    assert len(counters) <= 10


# --- bounded state: O(1) per decision when the table is full (issue 10) -----------------------


class Checks:
    """Counts the expiry checks a limiter makes: the work a decision does on the table."""

    def __init__(self, monkeypatch, *names: str) -> None:
        self.n = 0
        for name in names:
            original = getattr(ours, name)

            def counted(*args, _original=original):
                self.n += 1
                return _original(*args)

            monkeypatch.setattr(ours, name, counted)


@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow"])
def test_a_full_window_table_costs_the_same_per_new_key_whatever_its_size(monkeypatch, window_type):
    checks = Checks(monkeypatch, "_fixed_expired", "_sliding_expired")
    per_new_key = []
    for size in (1_000, 20_000):
        counters = MemoryCounters(max_keys=size)
        limiter = MemoryWindow(counters, window_type, 5, 3600)
        for i in range(size):  # full of live keys
            limiter.hit(f"fill{i}")
        checks.n = 0
        for i in range(500):  # each new key evicts one; before, each rescanned the whole table
            assert limiter.hit(f"new{i}").allowed
        assert len(counters) == size
        per_new_key.append(checks.n / 500)
    assert per_new_key[0] == per_new_key[1] <= 2, per_new_key
    # the evicted keys are the oldest: the newest fill keys and every new key are still counted
    assert limiter.hit("new499").remaining == 3
    assert limiter.hit(f"fill{20_000 - 1}").remaining == 3
    assert limiter.hit("fill0").remaining == 4  # evicted, starts again


@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow"])
def test_expired_keys_leave_from_the_front_only(monkeypatch, window_type):
    clock = Clock(1_700_000_000.0)
    monkeypatch.setattr(ours.time, "time", clock.time)
    checks = Checks(monkeypatch, "_fixed_expired", "_sliding_expired")
    counters = MemoryCounters(max_keys=1_000)
    limiter = MemoryWindow(counters, window_type, 5, 10)
    for i in range(1_000):
        limiter.hit(f"old{i}")
    clock.now += 100  # every key expired
    limiter.hit("old3")  # an existing key starting a new window moves to the end
    clock.now += 1
    checks.n = 0
    for i in range(1_000):
        limiter.hit(f"new{i}")
    # each expired key is checked once as it leaves; a live front stops the sweep at once
    assert checks.n <= 1_000 + 1_000 + 2
    assert len(counters) == 1_000
    assert "old3" + limiter.suffix not in limiter.table  # it expired in turn (oldest of the rest)


def test_a_full_token_bucket_table_costs_the_same_per_new_key_whatever_its_size(monkeypatch):
    from kairos.ratelimit import MemoryTokenBucket

    checks = Checks(monkeypatch, "_bucket_full")
    per_new_key = []
    for size in (1_000, 20_000):
        bucket = MemoryTokenBucket(capacity=10, initial=10, rate=0.001, max_keys=size)
        for i in range(size):
            bucket.hit(f"fill{i}")
        checks.n = 0
        for i in range(500):
            assert bucket.hit(f"new{i}").allowed
        assert len(bucket.buckets) == size
        per_new_key.append(checks.n / 500)
    assert per_new_key[0] == per_new_key[1] <= 2, per_new_key
    # least recently hit leaves first: a key hit again survives
    bucket = MemoryTokenBucket(capacity=10, initial=10, rate=0.001, max_keys=3)
    for key in ("a", "b", "c", "a", "d"):
        bucket.hit(key)
    assert list(bucket.buckets) == ["c", "a", "d"]


def test_full_token_buckets_are_dropped_without_a_scan(monkeypatch):
    from kairos.ratelimit import MemoryTokenBucket

    clock = Clock(1_000.0)
    monkeypatch.setattr(ours.time, "monotonic", clock.time)
    bucket = MemoryTokenBucket(capacity=2, initial=2, rate=1.0, max_keys=100)
    for i in range(50):
        bucket.hit(f"k{i}")
    clock.now += 5  # every bucket is full again
    bucket.hit("fresh")
    assert list(bucket.buckets) == ["fresh"]
