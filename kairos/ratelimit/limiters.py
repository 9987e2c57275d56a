"""The limiter implementations (see the package docstring)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Redis calls are bounded: a slow Redis must not hold requests hostage.
REDIS_TIMEOUT_S = 0.5
# Whole decision (waiting for a pooled connection included) is bounded by this.
REDIS_DEADLINE_S = 1.0
REDIS_MAX_CONNECTIONS = 64

_TOKEN_BUCKET_LUA = (Path(__file__).with_name("token_bucket.lua")).read_text()
_WINDOW_LUA = (Path(__file__).with_name("window.lua")).read_text()


class Decision(NamedTuple):
    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds


class BackendUnavailable(Exception):
    """Redis did not answer (down, refused, timed out)."""


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable redis url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------------------- memory
#
# Bounded state, O(1) per decision even when full. Each table is an OrderedDict kept
# in the order its keys expire: a fixed or sliding window key moves to the end when
# it starts a new window (all keys of a table share one window length, so the front
# is always the next to expire), a token bucket moves to the end on every hit. A
# sweep pops expired keys off the front and stops at the first live one; a full
# table evicts its front. (A plain dict would do for the order, but popping its first
# item repeatedly is not O(1): CPython scans the holes left at the front.)


def _fixed_expired(state: list[float], now: float, window: int) -> bool:
    return state[1] <= now  # [count, window end]


def _sliding_expired(state: list[float], now: float, window: int) -> bool:
    # [window index, current, previous, window]: the previous window still counts
    return state[0] < now // window - 1


class MemoryCounters:
    """Window counters of this process, shared by every MemoryWindow (keys carry limit and window).

    Not `limits`' MemoryStorage: that one restarts a `threading.Timer` every 10 ms while
    counters exist -- a new thread a hundred times a second contending with the event
    loop for the GIL -- and takes an RLock per call. Measured through the gateway: the
    in-memory limiter cost ~25% of throughput with it. Here everything runs on the
    event loop's thread, so plain dicts suffice; expired entries are swept lazily.
    """

    SWEEP_EVERY_S = 10.0

    def __init__(self, max_keys: int = 200_000) -> None:
        self.max_keys = max_keys
        self.size = 0  # keys in all tables
        # (kind, window length) -> key -> state, in expiry order
        self.tables: dict[tuple[str, int], OrderedDict[str, list[float]]] = {}
        self._next_sweep = time.time() + self.SWEEP_EVERY_S

    def __len__(self) -> int:
        return self.size

    def table(self, kind: str, window: int) -> OrderedDict[str, list[float]]:
        return self.tables.setdefault((kind, window), OrderedDict())

    def reset(self) -> None:
        for table in self.tables.values():
            table.clear()
        self.size = 0

    def sweep(self, now: float) -> None:
        """Drop expired keys: only the front of each table is looked at."""
        self._next_sweep = now + self.SWEEP_EVERY_S
        for (kind, window), table in self.tables.items():
            expired = _fixed_expired if kind == "fw" else _sliding_expired
            while table:
                key, state = next(iter(table.items()))
                if not expired(state, now, window):
                    break
                del table[key]
                self.size -= 1

    def add(self, table: OrderedDict[str, list[float]], key: str, state: list[float], now: float) -> None:
        """Insert a new key at the end of its table, after making room if all are taken."""
        if self.size >= self.max_keys:
            self.sweep(now)
            if self.size >= self.max_keys:  # still full of live keys: the largest table gives up its next to expire
                victim = max(self.tables.values(), key=len)
                victim.popitem(last=False)
                self.size -= 1
        table[key] = state
        self.size += 1


class MemoryWindow:
    """FixedWindow / SlidingWindow in this process, with the arithmetic of `limits`.

    FixedWindow: the window starts at a key's first hit (as `limits`' fixed window).
    SlidingWindow: `limits`' sliding-window counter -- windows aligned on multiples of
    the duration, the previous window's count weighted by the part of it still in view.
    """

    def __init__(self, counters: MemoryCounters, window_type: str, limit: int, window: int) -> None:
        self.counters = counters
        self.sliding = window_type != "FixedWindow"
        self.limit = limit
        self.window = window
        self.suffix = f"/{limit}/{window}/{'sw' if self.sliding else 'fw'}"
        self.table = counters.table("sw" if self.sliding else "fw", window)

    def hit(self, key: str) -> Decision:
        counters, limit, window, table = self.counters, self.limit, self.window, self.table
        key = key + self.suffix
        now = time.time()
        if now >= counters._next_sweep:
            counters.sweep(now)
        if not self.sliding:
            state = table.get(key)
            if state is None:
                state = [0, now + window]
                counters.add(table, key, state, now)
            elif state[1] <= now:  # a new window: to the end, where the latest expiries are
                state[0], state[1] = 0, now + window
                table.move_to_end(key)
            state[0] += 1
            count = state[0]
            return Decision(count <= limit, limit, max(0, limit - int(count)), _whole_seconds(state[1] - now))
        index = now // window
        state = table.get(key)
        if state is None:
            state = [index, 0, 0, window]
            counters.add(table, key, state, now)
        elif state[0] != index:
            previous = state[1] if state[0] == index - 1 else 0
            state[0], state[1], state[2] = index, 0, previous
            table.move_to_end(key)
        previous, current = state[2], state[1]
        elapsed = (now / window) % 1
        previous_ttl = (1 - elapsed) * window if previous else 0.0
        carried = previous * previous_ttl / window
        allowed = math.floor(carried + current) + 1 <= limit
        if allowed:
            current += 1
            state[1] = current
        remaining = max(0, limit - math.floor(carried + current))
        # As limits' SlidingWindowCounterRateLimiter.get_window_stats computes it.
        reset_in = math.inf
        if previous:
            reset_in = previous_ttl % (window / previous)
        if current:
            reset_in = min(reset_in, ((1 - elapsed) * window + window) % window)
        return Decision(allowed, limit, remaining, 0 if reset_in == math.inf else _whole_seconds(reset_in))


def _bucket_full(state: list[float], now: float, capacity: int, rate: float) -> bool:
    return state[0] + (now - state[1]) * rate >= capacity  # [tokens, last hit]


class MemoryTokenBucket:
    """capacity tokens at most, `initial` at first, refilled at `rate` per second.

    Buckets are kept least recently hit first; a full bucket holds no information and is
    dropped when it reaches the front.
    """

    def __init__(self, capacity: int, initial: int, rate: float, max_keys: int = 100_000) -> None:
        self.capacity = capacity
        self.initial = min(initial, capacity)
        self.rate = rate
        self.limit = capacity
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()
        self.max_keys = max_keys

    def hit(self, key: str) -> Decision:
        now = time.monotonic()
        buckets = self.buckets
        state = buckets.get(key)
        if state is None:
            self._sweep(now)
            if len(buckets) >= self.max_keys:  # still full of live buckets: evict the least recent
                buckets.popitem(last=False)
            state = buckets[key] = [float(self.initial), now]
        else:
            buckets.move_to_end(key)
        tokens, ts = state
        capacity, rate = self.capacity, self.rate
        if now > ts:
            tokens = min(capacity, tokens + (now - ts) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        state[0] = tokens
        state[1] = now
        if tokens < capacity:
            wait = (1.0 - (tokens - math.floor(tokens))) / rate
            reset = _whole_seconds(wait)
        else:
            reset = 0
        return Decision(allowed, capacity, int(tokens), reset)

    def _sweep(self, now: float) -> None:
        """Drop full buckets off the front (least recently hit first); stop at the first that is not."""
        buckets, capacity, rate = self.buckets, self.capacity, self.rate
        while buckets:
            key, state = next(iter(buckets.items()))
            if not _bucket_full(state, now, capacity, rate):
                break
            del buckets[key]


def _whole_seconds(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-6))


# ---------------------------------------------------------------------------- redis
class RedisBackend:
    """One redis-py asyncio pool per Redis URL, shared by every limiter."""

    def __init__(self, url: str, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.url = url
        self.safe_url = redact_url(url)
        self.timeout_s = timeout_s
        # A bounded pool that queues (instead of failing) when every connection is busy:
        # a burst of requests must not open hundreds of connections at once.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=REDIS_DEADLINE_S,  # wait for a free connection (a local queue, not Redis being slow)
            socket_timeout=timeout_s,
            # asyncio measures this: on a loop busy with a burst a 0.25 s connect times out falsely.
            socket_connect_timeout=REDIS_DEADLINE_S,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),  # no silent retries: the caller's deadline and on_redis_error decide
        )
        self.client = aioredis.Redis(connection_pool=pool)
        self.token_bucket = self.client.register_script(_TOKEN_BUCKET_LUA)
        self.window = self.client.register_script(_WINDOW_LUA)
        self.health: Any = None  # failure pause and log throttling, owned by the rate-limit layer

    def __repr__(self) -> str:
        return f"RedisBackend({self.safe_url})"

    async def aclose(self) -> None:
        await self.client.aclose()


# redis-py errors, sockets, our own deadline: all mean "no answer".
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


async def _run_script(script: Any, key: str, args: tuple[Any, ...], timeout_s: float) -> Any:
    """One atomic decision in Redis, within the deadline; no answer is BackendUnavailable."""
    try:
        async with asyncio.timeout(timeout_s):
            return await script(keys=[key], args=args)
    except _REDIS_FAILURES as exc:
        raise BackendUnavailable(f"{exc.__class__.__name__}: {exc}") from None


class RedisWindow:
    """FixedWindow / SlidingWindow shared through Redis: one atomic script, one round trip.

    (`limits`' own Redis strategies took two or three round trips per decision -- hit,
    then window stats -- which held Redis-backed limiting to ~30% of the plain proxy.)
    """

    def __init__(self, backend: RedisBackend, key_prefix: str, window_type: str, limit: int, window: int) -> None:
        self.backend = backend
        kind = "fw" if window_type == "FixedWindow" else "sw"
        self.prefix = f"{key_prefix}:{kind}:{limit}:{window}:"
        self.args = (limit, window, kind)
        self.limit = limit
        self.timeout_s = REDIS_DEADLINE_S

    async def hit(self, key: str) -> Decision:
        allowed, remaining, reset = await _run_script(self.backend.window, self.prefix + key, self.args, self.timeout_s)
        return Decision(bool(allowed), self.limit, int(remaining), _whole_seconds(float(reset)))


class RedisTokenBucket:
    """The token bucket as one atomic Lua script (Redis time, so every gateway agrees)."""

    def __init__(self, backend: RedisBackend, key_prefix: str, capacity: int, initial: int, rate: float) -> None:
        self.backend = backend
        self.prefix = f"{key_prefix}:tb:"
        self.args = (capacity, min(initial, capacity), repr(rate))
        self.limit = capacity
        self.timeout_s = REDIS_DEADLINE_S

    async def hit(self, key: str) -> Decision:
        allowed, remaining, wait_ms = await _run_script(self.backend.token_bucket, self.prefix + key, self.args, self.timeout_s)
        return Decision(bool(allowed), self.limit, int(remaining), _whole_seconds(int(wait_ms) / 1000))
