"""The cache layer in process over the Redis store with a real redis-server: shared entries, expiry by
Redis, purge, coalescing across two stores, the outage, revalidation, waiters that stop waiting."""

from __future__ import annotations

import asyncio

from kairos.cache import CacheStores
from kairos.config.cache import CacheConfig
from tests.cache_support import Origin, build, get, ok


def redis_layer(origin, url, **cfg):
    import redis.asyncio as aioredis

    stores = CacheStores(lambda u: aioredis.Redis.from_url(u, socket_connect_timeout=0.5, socket_timeout=0.5))
    return build(origin, CacheConfig(enabled=True, backend="redis", **cfg), stores, url)


async def test_redis_entries_are_shared_expired_by_redis_and_purged(redis_clean):
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    one, two = redis_layer(origin, redis_clean), redis_layer(origin, redis_clean)
    assert (await get(one))[1]["x-cache"] == "MISS"
    assert (await get(two))[1]["x-cache"] == "HIT"  # another instance sees it
    ttl = int(redis_clean.command("PTTL", "kairos_cache:/r/{id} /r/1"))
    assert 0 < ttl <= 60_000
    await get(one, path="/r/2")
    assert await one.store.purge(route="/r/{id}", key_prefix="/r/1") == 1
    assert (await get(two))[1]["x-cache"] == "MISS"
    assert (await get(two, path="/r/2"))[1]["x-cache"] == "HIT"
    assert await two.store.purge() == 2


async def test_redis_coalescing_across_instances(redis_clean):
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    origin.delay = 0.2
    instances = [redis_layer(origin, redis_clean) for _ in range(2)]
    results = await asyncio.gather(*[get(instances[i % 2]) for i in range(20)])
    assert len(origin.calls) == 1
    assert all(b == b"hello" for _, _, b in results)


async def test_redis_outage_bypasses_and_recovers(redis_clean):
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    app = redis_layer(origin, redis_clean)
    await get(app)
    redis_clean.stop()
    try:
        s, h, b = await get(app)
        assert (s, h["x-cache"], b) == (200, "BYPASS", b"hello")
        s, h, b = await get(app)
        assert (s, h["x-cache"]) == (200, "BYPASS")
    finally:
        redis_clean.start()
    app.store._paused_until = 0  # skip the one-second pause instead of sleeping through it
    s, h, b = await get(app)
    assert h["x-cache"] == "MISS"
    assert (await get(app))[1]["x-cache"] == "HIT"


async def test_redis_revalidation_keeps_the_refreshed_entry(redis_clean):
    def respond(scope):
        if dict(scope["headers"]).get(b"if-none-match") == b'"v1"':
            return 304, {"etag": '"v1"', "cache-control": "max-age=60"}, []
        return 200, {"etag": '"v1"', "cache-control": "max-age=0", "content-type": "text/plain"}, [b"doc"]

    origin = Origin(respond)
    app = redis_layer(origin, redis_clean)
    await get(app)
    s, h, b = await get(app)
    assert (h["x-cache"], b) == ("REVALIDATED", b"doc")
    s, h, b = await get(app)
    assert (h["x-cache"], b) == ("HIT", b"doc") and len(origin.calls) == 2


async def test_redis_waiters_stop_waiting_when_the_other_instance_stores_nothing(redis_clean):
    origin = Origin(ok(**{"cache-control": "private"}))  # never stored
    origin.delay = 0.2
    one = redis_layer(origin, redis_clean, coalesce_timeout_ms=600_000)
    two = redis_layer(origin, redis_clean, coalesce_timeout_ms=600_000)
    # Without noticing the lock go away, the second would wait out its 10-minute timeout.
    results = await asyncio.wait_for(asyncio.gather(get(one), get(two)), 30)
    assert all(s == 200 for s, _, _ in results) and len(origin.calls) == 2
