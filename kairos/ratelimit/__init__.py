"""Rate-limit counters: the `limits` library's fixed and sliding windows, and our token bucket.

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
