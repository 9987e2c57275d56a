"""Rate-limit counters: fixed window, sliding-window counter (both with the arithmetic of the
`limits` library, which the tests use as the reference) and token bucket, in memory or in Redis.

Why not `limits` itself at run time: its MemoryStorage starts a timer thread every 10 ms
(GIL contention with the event loop: the in-memory limiter cost ~25% of throughput) and
its Redis strategies take two or three round trips per decision; here memory counters
are plain dicts on the loop's thread and every Redis decision is one atomic script.

Every limiter answers one question per request, `hit(key) -> Decision`:

    Decision(allowed, limit, remaining, reset)   reset: whole seconds until the window
                                                  resets / until the next token is back

Memory limiters are synchronous (a few µs, no await); Redis limiters are
coroutines and raise `BackendUnavailable` when Redis does not answer in time.
"""

from kairos.ratelimit.limiters import (
    BackendUnavailable,
    Decision,
    MemoryCounters,
    MemoryTokenBucket,
    MemoryWindow,
    RedisBackend,
    RedisTokenBucket,
    RedisWindow,
    redact_url,
)

__all__ = [
    "BackendUnavailable",
    "Decision",
    "MemoryCounters",
    "MemoryTokenBucket",
    "MemoryWindow",
    "RedisBackend",
    "RedisTokenBucket",
    "RedisWindow",
    "redact_url",
]
