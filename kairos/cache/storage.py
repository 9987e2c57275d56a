"""Where cached responses live: in process (LRU by bytes) or in Redis (shared by every instance).

Both stores keep, per *base key* (`<route> <path?query>`), the list of stored
variants of that URL (Vary, key extras). A variant is a `StoredEntry`: the
response as the client got it (status, headers, whole body) plus the request
headers its Vary names. The RFC decisions are not made here (see layer.py);
a store only keeps entries until their `keep_until` and answers by base key.

Redis layout: one hash per base key, `<prefix><base>` -> {entry id: blob},
expired by Redis at the latest `keep_until` of its entries; a lock key
`<prefix>lock:<base>` coalesces misses across instances. Any Redis failure
raises `StoreUnavailable` and pauses the store for a second, so an outage costs
each request nothing but a flag check (the layer turns it into a bypass).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
import uuid
from collections import OrderedDict
from typing import Any

from kairos.observability import metrics
from kairos.observability.logging import log_event

_LEN = struct.Struct(">I")
ENTRY_OVERHEAD = 256  # bytes charged per entry on top of body and headers (objects, dict slots)


class StoreUnavailable(Exception):
    """The store could not answer (Redis down or slow): bypass the cache for this request."""


class StoredEntry:
    """One stored response variant."""

    __slots__ = ("id", "base", "extras", "request_headers", "status", "headers", "body", "stored_at",
                 "keep_until", "size", "view", "meta")

    def __init__(self, base: str, extras: str, request_headers: dict[str, list[str]], status: int,
                 headers: list[tuple[bytes, bytes]], body: bytes, stored_at: float, keep_until: float,
                 id: str | None = None) -> None:
        self.id = id or uuid.uuid4().hex
        self.base = base
        self.extras = extras
        self.request_headers = request_headers
        self.status = status
        self.headers = headers
        self.body = body
        self.stored_at = stored_at
        self.keep_until = keep_until
        self.size = len(body) + sum(len(n) + len(v) for n, v in headers) + ENTRY_OVERHEAD
        self.view: Any = None  # the hishel Entry built from it, cached by the layer
        self.meta: Any = None  # figures the layer derives from the view once

    def replacing(self, headers: list[tuple[bytes, bytes]], stored_at: float, keep_until: float) -> StoredEntry:
        """The same variant with refreshed headers (after a 304)."""
        return StoredEntry(self.base, self.extras, self.request_headers, self.status, headers, self.body,
                           stored_at, keep_until, self.id)

    def same_variant(self, other: StoredEntry) -> bool:
        return self.extras == other.extras and self.request_headers == other.request_headers

    # ------------------------------------------------------------------ Redis blob
    def dumps(self) -> bytes:
        meta = json.dumps({
            "id": self.id, "base": self.base, "extras": self.extras, "req": self.request_headers,
            "status": self.status, "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "stored_at": self.stored_at, "keep_until": self.keep_until,
        }, separators=(",", ":")).encode()
        return _LEN.pack(len(meta)) + meta + self.body

    @classmethod
    def loads(cls, blob: bytes) -> StoredEntry:
        (n,) = _LEN.unpack_from(blob)
        meta = json.loads(blob[4:4 + n])
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]]
        return cls(meta["base"], meta["extras"], meta["req"], meta["status"], headers, blob[4 + n:],
                   meta["stored_at"], meta["keep_until"], meta["id"])


def _matches(base: str, route: str | None, key_prefix: str | None) -> bool:
    name, _, url = base.partition(" ")
    return (route is None or name == route) and (key_prefix is None or url.startswith(key_prefix))


class MemoryStore:
    """Entries in this process, least recently used evicted first once `budget` bytes are used."""

    shared = False
    backend = "memory"

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.bases: dict[str, list[StoredEntry]] = {}
        self.lru: OrderedDict[str, StoredEntry] = OrderedDict()
        self._bytes = metrics.CACHE_BYTES.labels("memory")
        self._entries = metrics.CACHE_ENTRIES.labels("memory")
        self._evictions = metrics.CACHE_EVICTIONS.labels("memory")

    async def get(self, base: str) -> list[StoredEntry]:
        entries = self.bases.get(base)
        if not entries:
            return []
        now = time.time()
        if any(e.keep_until <= now for e in entries):
            for e in [e for e in entries if e.keep_until <= now]:
                self._remove(e)
            entries = self.bases.get(base, [])
        for e in entries:
            self.lru.move_to_end(e.id)
        return list(entries)

    async def put(self, entry: StoredEntry, replaces: list[str] | None = None) -> None:
        if entry.size > self.budget:
            return
        gone = set(replaces or ())
        for old in [e for e in self.bases.get(entry.base, ()) if e.same_variant(entry) or e.id in gone]:
            self._remove(old)
        self.bases.setdefault(entry.base, []).append(entry)
        self.lru[entry.id] = entry
        self.used += entry.size
        while self.used > self.budget and self.lru:
            self._remove(next(iter(self.lru.values())))
            self._evictions.inc()
        self._report()

    async def delete(self, base: str) -> None:
        for e in list(self.bases.get(base, ())):
            self._remove(e)
        self._report()

    async def remove(self, base: str, ids: list[str]) -> None:
        for e in [e for e in self.bases.get(base, ()) if e.id in ids]:
            self._remove(e)
        self._report()

    async def purge(self, route: str | None = None, key_prefix: str | None = None) -> int:
        bases = [b for b in self.bases if _matches(b, route, key_prefix)]
        count = 0
        for base in bases:
            count += len(self.bases.get(base, ()))
            await self.delete(base)
        return count

    async def lock(self, name: str, ttl_ms: int) -> bool:
        return True  # within one process the layer's in-flight table coalesces

    async def unlock(self, name: str) -> None:
        pass

    async def locked(self, name: str) -> bool:
        return False

    def _remove(self, entry: StoredEntry) -> None:
        if self.lru.pop(entry.id, None) is None:
            return
        self.used -= entry.size
        entries = self.bases.get(entry.base)
        if entries is not None:
            entries[:] = [e for e in entries if e.id != entry.id]
            if not entries:
                del self.bases[entry.base]

    def _report(self) -> None:
        self._bytes.set(self.used)
        self._entries.set(len(self.lru))

    async def aclose(self) -> None:
        pass


# Store one variant, drop the ones it replaces, and extend the hash's expiry (never shorten it).
_PUT_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 4, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

PAUSE_AFTER_FAILURE_S = 1.0
LOG_EVERY_S = 10.0


def _glob_escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in "*?[]\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)


class RedisStore:
    """Entries in Redis, visible to every gateway instance and worker, expired by Redis."""

    shared = True
    backend = "redis"

    def __init__(self, client: Any, prefix: str = "kairos_cache:", timeout_s: float = 0.5, safe_url: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.safe_url = safe_url
        self._put = client.register_script(_PUT_LUA)
        self._paused_until = 0.0
        self._down_since = 0.0
        self._last_log = 0.0
        self._errors = metrics.CACHE_BACKEND_ERRORS

    def use(self, client: Any) -> None:
        """Switch to `client` (the shared pool for this URL was replaced after a reload)."""
        if client is not self.client:
            self.client = client
            self._put = client.register_script(_PUT_LUA)

    async def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        if time.monotonic() < self._paused_until:
            raise StoreUnavailable("paused after a failure")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await fn(*args, **kw)
        except Exception as exc:  # redis-py errors, sockets, our deadline: all mean "no answer"
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from None
        if self._down_since:
            log_event("cache_backend_recovered", logging.INFO, backend="redis", url=self.safe_url,
                      down_s=round(time.monotonic() - self._down_since, 3))
            self._down_since = 0.0
        return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._paused_until = now + PAUSE_AFTER_FAILURE_S
        self._errors.inc()
        if not self._down_since:
            self._down_since = now
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log_event("cache_backend_unavailable", logging.WARNING, backend="redis", url=self.safe_url,
                      error=f"{type(exc).__name__}: {exc}"[:300], action="bypass")

    async def get(self, base: str) -> list[StoredEntry]:
        raw = await self._call(self.client.hgetall, self.prefix + base)
        now = time.time()
        out = []
        for blob in raw.values():
            try:
                entry = StoredEntry.loads(blob)
            except (ValueError, KeyError, struct.error):
                continue  # a blob from another version or a broken write: a miss
            if entry.keep_until > now:
                out.append(entry)
        return out

    async def put(self, entry: StoredEntry, replaces: list[str] | None = None) -> None:
        ttl_ms = max(1, int((entry.keep_until - time.time()) * 1000))
        args = [entry.id, entry.dumps(), ttl_ms, *(i for i in replaces or () if i != entry.id)]
        await self._call(self._put, keys=[self.prefix + entry.base], args=args)

    async def delete(self, base: str) -> None:
        await self._call(self.client.unlink, self.prefix + base)

    async def remove(self, base: str, ids: list[str]) -> None:
        if ids:
            await self._call(self.client.hdel, self.prefix + base, *ids)

    async def purge(self, route: str | None = None, key_prefix: str | None = None) -> int:
        """Remove matching bases (SCAN, so it is an admin operation, not a request-path one)."""
        if route is None and key_prefix is None:
            pattern = _glob_escape(self.prefix) + "*"
        else:
            pattern = _glob_escape(self.prefix + (route if route is not None else "")) + ("" if route is not None else "*")
            pattern += _glob_escape(" " + key_prefix) + "*" if key_prefix is not None else " *"
        removed = 0
        batch: list[Any] = []
        async for key in self.client.scan_iter(match=pattern, count=500):
            if key.startswith((self.prefix + "lock:").encode()):
                continue
            batch.append(key)
            if len(batch) >= 500:
                removed += await self.client.unlink(*batch)
                batch = []
        if batch:
            removed += await self.client.unlink(*batch)
        return removed

    async def lock(self, name: str, ttl_ms: int) -> bool:
        return bool(await self._call(self.client.set, self.prefix + "lock:" + name, b"1", nx=True, px=ttl_ms))

    async def unlock(self, name: str) -> None:
        await self._call(self.client.unlink, self.prefix + "lock:" + name)

    async def locked(self, name: str) -> bool:
        return bool(await self._call(self.client.exists, self.prefix + "lock:" + name))

    async def aclose(self) -> None:
        pass  # the client belongs to whoever made it (the shared Redis pool)
