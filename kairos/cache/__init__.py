"""Response caching: a shared HTTP cache per route, in process or in Redis (docs/caching.md).

`CacheStores` holds the stores for a gateway and outlives config reloads (a
reload must not empty the cache); `cache_layer` is the route's factory.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from kairos.cache.layer import Cache, CachePolicy, cache_policy
from kairos.cache.storage import MemoryStore, RedisStore, StoredEntry, StoreUnavailable
from kairos.config.cache import CacheConfig
from kairos.observability.logging import redact
from kairos.types import ASGIApp

__all__ = ["Cache", "CachePolicy", "CacheStores", "MemoryStore", "RedisStore", "StoredEntry", "StoreUnavailable",
           "cache_layer", "cache_policy"]


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
        if store is None:
            if config.backend == "redis":
                if self.redis_client is None:
                    raise RuntimeError("the redis cache backend needs a Redis client factory")
                store = RedisStore(self.redis_client(redis_url), config.redis_key_prefix, safe_url=redact(redis_url))
            else:
                store = MemoryStore(config.memory_bytes)
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


def cache_layer(app: ASGIApp, route_name: str, config: CacheConfig | None, stores: CacheStores,
                redis_url: str) -> ASGIApp:
    """The route's Cache around `app`, or `app` itself when the route does not cache."""
    policy = cache_policy(route_name, config)
    if policy is None:
        return app
    assert config is not None
    store, inflight, refreshing = stores.store_for(config, redis_url)
    return Cache(app, policy, store, inflight, refreshing)
