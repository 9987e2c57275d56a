"""The cache stores of one gateway process, kept across config reloads (a reload must not empty the cache)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from kairos.cache.storage import MemoryStore, RedisStore
from kairos.config.cache import CacheConfig
from kairos.observability.logging import redact


def cache_redis_url(config: CacheConfig, rate_limit: Any, redis_url_for: Callable[[str | None], str]) -> str:
    """The Redis a cache uses: its own `redis_url`, else the route's `rate_limit` one, else the default."""
    return redis_url_for(config.redis_url or (rate_limit.redis_url if rate_limit is not None else None))


class CacheStores:
    """One store per backend (memory budget, or Redis URL + prefix), shared by the routes using it.

    `redis_client(url)` gives the redis-py asyncio client for a URL (the gateway's shared pool).
    """

    def __init__(self, redis_client: Callable[[str], Any] | None = None) -> None:
        self.redis_client = redis_client
        self.stores: dict[tuple[Any, ...], MemoryStore | RedisStore] = {}
        self.inflight: dict[tuple[Any, ...], dict[str, asyncio.Event]] = {}
        self.refreshing: dict[tuple[Any, ...], set[str]] = {}

    def store_for(self, config: CacheConfig, redis_url: str) -> tuple[MemoryStore | RedisStore, dict, set]:
        if config.backend == "redis":
            ident: tuple[Any, ...] = ("redis", redis_url, config.redis_key_prefix)
        else:
            ident = ("memory", config.memory_bytes)
        store = self.stores.get(ident)
        if config.backend == "redis":
            if self.redis_client is None:
                raise RuntimeError("the redis cache backend needs a Redis client factory")
            # Asked at every compile: the pool's owner keeps it open while a route uses it.
            client = self.redis_client(redis_url)
            if store is None:
                store = RedisStore(client, config.redis_key_prefix, safe_url=redact(redis_url))
            else:
                assert isinstance(store, RedisStore)
                store.use(client)
        elif store is None:
            store = MemoryStore(config.memory_bytes)
        if ident not in self.stores:
            self.stores[ident] = store
            self.inflight[ident] = {}
            self.refreshing[ident] = set()
        return store, self.inflight[ident], self.refreshing[ident]

    async def purge(self, route: str | None = None, key_prefix: str | None = None) -> int:
        """Remove stored entries of `route` (its external_path) and/or whose URL starts with `key_prefix`."""
        removed = 0
        for store in self.stores.values():
            removed += await store.purge(route, key_prefix)
        return removed
