"""`kairos cache purge CONFIG [--route PATH]`: empty the Redis-backed caches a config uses.

In-process (memory) caches live inside each gateway worker; they are purged
through the running gateway (`CacheStores.purge`, which the admin API calls).
"""

from __future__ import annotations

from typing import Callable

from kairos.cache.storage import RedisStore
from kairos.cache.stores import cache_redis_url
from kairos.config.cache import CacheConfig
from kairos.config.models import GatewayConfig


def redis_caches(config: GatewayConfig, redis_url_for: Callable[[str | None], str],
                 route: str | None = None) -> dict[tuple[str, str], list[str]]:
    """{(redis url, key prefix): [route names]} of the routes whose effective cache is Redis-backed."""
    out: dict[tuple[str, str], list[str]] = {}
    for router in config.routers:
        if route is not None and router.external_path != route:
            continue
        cache: CacheConfig | None = config.policy(router, "cache")
        if cache is None or not cache.enabled or cache.backend != "redis":
            continue
        url = cache_redis_url(cache, config.policy(router, "rate_limit"), redis_url_for)
        out.setdefault((url, cache.redis_key_prefix), []).append(router.external_path)
    return out


async def purge_redis(config: GatewayConfig, redis_url_for: Callable[[str | None], str],
                      route: str | None = None) -> int:
    import redis.asyncio as aioredis

    removed = 0
    for (url, prefix), routes in redis_caches(config, redis_url_for, route).items():
        client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            store = RedisStore(client, prefix)
            for name in routes:  # with `route` given, redis_caches kept only that route
                removed += await store.purge(route=name)
        finally:
            await client.aclose()
    return removed
