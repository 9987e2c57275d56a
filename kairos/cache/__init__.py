"""Response caching: a shared HTTP cache per route, in process or in Redis (docs/caching.md).

`CacheStores` holds the stores for a gateway and outlives config reloads (a
reload must not empty the cache); `cache_layer` is the route's factory.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from kairos.cache.layer import Cache, CachePolicy, cache_policy
from kairos.cache.storage import MemoryStore, RedisStore, StoredEntry, StoreUnavailable
from kairos.cache.stores import CacheStores, cache_redis_url
from kairos.config.cache import CacheConfig
from kairos.edge import redis_url_for

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

__all__ = ["Cache", "CachePolicy", "CacheStores", "MemoryStore", "RedisStore", "StoredEntry", "StoreUnavailable",
           "cache_layer", "cache_policy"]


def cache_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    """The route's Cache, or None when the route does not cache (it then pays nothing)."""
    config: CacheConfig | None = route.policy("cache")
    policy = cache_policy(route.name, config)
    if policy is None or config is None:
        return None
    redis_url = cache_redis_url(config, route.policy("rate_limit"), redis_url_for)
    store, inflight, refreshing = deps.caches.store_for(config, redis_url)
    return partial(Cache, policy=policy, store=store, inflight=inflight, refreshing=refreshing)
