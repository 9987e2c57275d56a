"""The in-process cache store keeps within `memory_bytes`, evicting the least recently used
entries first, and reports bytes, entries and evictions (issue 11: "LRU by bytes", the metrics)."""

from __future__ import annotations

import time

from kairos.cache.storage import ENTRY_OVERHEAD, MemoryStore, StoredEntry
from kairos.observability import metrics


def entry(base: str, size: int) -> StoredEntry:
    return StoredEntry(base, "", {}, 200, [], b"x" * (size - ENTRY_OVERHEAD), time.time(), time.time() + 60)


def sample(metric, **labels: str) -> float:
    return metric.labels(**labels)._value.get()


async def test_least_recently_used_entries_go_first_and_are_counted():
    store = MemoryStore(budget=3000)
    evictions = sample(metrics.CACHE_EVICTIONS, backend="memory")
    for name in ("a", "b", "c"):
        await store.put(entry(name, 1000))
    assert store.used == 3000 and set(store.bases) == {"a", "b", "c"}
    await store.get("a")  # a is now the most recently used: b is the oldest
    await store.put(entry("d", 1000))
    assert set(store.bases) == {"a", "c", "d"}
    assert store.used == 3000
    assert sample(metrics.CACHE_EVICTIONS, backend="memory") == evictions + 1
    assert sample(metrics.CACHE_BYTES, backend="memory") == 3000
    assert sample(metrics.CACHE_ENTRIES, backend="memory") == 3
    # one large entry pushes out as many old ones as its size needs
    await store.put(entry("e", 2500))
    assert set(store.bases) == {"e"} and store.used == 2500
    assert sample(metrics.CACHE_EVICTIONS, backend="memory") == evictions + 4


async def test_an_entry_larger_than_the_budget_is_not_stored_and_evicts_nothing():
    store = MemoryStore(budget=3000)
    await store.put(entry("a", 1000))
    await store.put(entry("huge", 3001))
    assert set(store.bases) == {"a"} and store.used == 1000
