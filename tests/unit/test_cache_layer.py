"""The cache layer in process, over a scripted origin: RFC 9111 decisions, Vary, revalidation,
stale content, coalescing, streaming past max_size, invalidation, LRU by bytes, config errors.
(The Redis store and a real gateway: tests/integration/test_cache_redis_store.py, test_cache_gateway.py.)"""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from kairos.cache import Cache, CachePolicy, CacheStores, MemoryStore
from kairos.cache.storage import StoredEntry
from kairos.config.cache import CacheConfig
from kairos.config.models import GatewayConfig
from kairos.errors import GatewayError
from tests.cache_support import Origin, get, layer, ok


async def test_miss_then_hit_with_age_and_xcache():
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    app = layer(origin)
    s, h, b = await get(app)
    assert (s, h["x-cache"], b) == (200, "MISS", b"hello")
    s, h, b = await get(app)
    assert (s, h["x-cache"], b, h["age"]) == (200, "HIT", b"hello", "0")
    assert h["content-length"] == "5"
    assert len(origin.calls) == 1
    s, h, b = await get(app, method="HEAD")
    assert (h["x-cache"], b) == ("HIT", b"")


async def test_a_head_miss_goes_upstream_and_stores_nothing():
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    app = layer(origin)
    s, h, _ = await get(app, method="HEAD")
    assert (s, h["x-cache"]) == (200, "MISS")
    assert [c["method"] for c in origin.calls] == ["HEAD"]  # forwarded as a HEAD, not turned into a GET
    _, h, b = await get(app)
    assert (h["x-cache"], b) == ("MISS", b"hello")  # the HEAD's answer (no body) was not stored
    assert len(origin.calls) == 2


@pytest.mark.parametrize("cc, extra, stored", [
    ("no-store", {}, False),
    ("private", {}, False),
    ("max-age=60", {"set-cookie": "sid=1"}, False),
    ("s-maxage=60, max-age=0", {}, True),
    ("no-cache", {}, True),  # stored, but revalidated before each use
    (None, {}, True),  # ttl_secs applies
])
async def test_storability(cc, extra, stored):
    headers = dict(extra)
    if cc:
        headers["cache-control"] = cc
    origin = Origin(ok(**headers))
    app = layer(origin)
    await get(app)
    _, h, _ = await get(app)
    if cc == "no-cache":
        assert len(origin.calls) == 2
    else:
        assert (h["x-cache"] == "HIT") is stored
        assert len(origin.calls) == (1 if stored else 2)


async def test_ttl_secs_when_the_upstream_says_nothing_and_expires_honoured():
    origin = Origin(ok())
    app = layer(origin, ttl_secs=0)
    await get(app)
    await get(app)
    assert len(origin.calls) == 2  # ttl 0 and no validators: never fresh
    past = email.utils.formatdate(time.time() - 10, usegmt=True)
    origin = Origin(ok(expires=past))
    app = layer(origin, ttl_secs=60)
    await get(app)
    await get(app)
    assert len(origin.calls) == 2  # an Expires in the past is stale, ttl_secs does not override it


async def test_request_no_store_and_range_bypass():
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    app = layer(origin)
    _, h, _ = await get(app, headers={"cache-control": "no-store"})
    assert h["x-cache"] == "BYPASS"
    _, h, _ = await get(app, headers={"range": "bytes=0-1"})
    assert h["x-cache"] == "BYPASS"
    _, h, _ = await get(app)
    assert h["x-cache"] == "MISS"


async def test_vary_accept_encoding_never_serves_another_variant():
    def respond(scope):
        ae = dict(scope["headers"]).get(b"accept-encoding", b"")
        body = b"GZ" if b"gzip" in ae else b"PLAIN"
        headers = {"cache-control": "max-age=60", "vary": "Accept-Encoding", "etag": '"same"'}
        if body == b"GZ":
            headers["content-encoding"] = "gzip"
        return 200, headers, [body]

    origin = Origin(respond)
    app = layer(origin)
    assert (await get(app, headers={"accept-encoding": "gzip"}))[2] == b"GZ"
    s, h, b = await get(app)
    assert (b, h["x-cache"]) == (b"PLAIN", "MISS")
    assert "if-none-match" not in origin.calls[-1]["headers"]
    assert (await get(app, headers={"accept-encoding": "gzip"}))[1]["x-cache"] == "HIT"
    s, h, b = await get(app)
    assert (b, h["x-cache"], h.get("content-encoding")) == (b"PLAIN", "HIT", None)


async def test_vary_star_never_served():
    origin = Origin(ok(**{"cache-control": "max-age=60", "vary": "*"}))
    app = layer(origin)
    await get(app)
    _, h, _ = await get(app)
    assert h["x-cache"] == "MISS" and len(origin.calls) == 2


async def test_revalidation_with_304_refreshes_headers():
    version = {"n": 0}

    def respond(scope):
        version["n"] += 1
        if dict(scope["headers"]).get(b"if-none-match") == b'"v1"':
            return 304, {"etag": '"v1"', "cache-control": "max-age=60", "x-fresh": str(version["n"])}, []
        return 200, {"etag": '"v1"', "cache-control": "max-age=0", "content-type": "text/plain"}, [b"body-v1"]

    origin = Origin(respond)
    app = layer(origin)
    await get(app)
    s, h, b = await get(app)
    assert (s, h["x-cache"], b, h["x-fresh"]) == (200, "REVALIDATED", b"body-v1", "2")
    assert origin.calls[-1]["headers"]["if-none-match"] == '"v1"'
    s, h, b = await get(app)  # the 304's max-age=60 now applies
    assert (h["x-cache"], b) == ("HIT", b"body-v1") and len(origin.calls) == 2


async def test_client_conditional_answered_304_from_fresh_entry():
    lm = email.utils.formatdate(time.time() - 100, usegmt=True)
    origin = Origin(ok(**{"cache-control": "max-age=60", "etag": '"abc"', "last-modified": lm}))
    app = layer(origin)
    await get(app)
    s, h, b = await get(app, headers={"if-none-match": 'W/"abc"'})  # weak comparison, as compression weakens it
    assert (s, b, h["etag"], h["x-cache"]) == (304, b"", '"abc"', "HIT")
    assert "content-type" not in h
    s, _, _ = await get(app, headers={"if-none-match": '"other"'})
    assert s == 200
    s, _, _ = await get(app, headers={"if-modified-since": email.utils.formatdate(time.time(), usegmt=True)})
    assert s == 304
    assert len(origin.calls) == 1


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once():
    n = {"v": 0}

    def respond(scope):
        n["v"] += 1
        return 200, {"cache-control": "max-age=1, stale-while-revalidate=30", "content-type": "text/plain"}, \
            [b"v%d" % n["v"]]

    origin = Origin(respond)
    app = layer(origin)
    await get(app)
    for entry in app.store.bases["/r/{id} /r/1"]:
        entry.stored_at -= 5
        entry.view = None
    origin.delay = 0.05
    results = await asyncio.gather(*[get(app) for _ in range(5)])
    assert {(h["x-cache"], b) for _, h, b in results} == {("STALE", b"v1")}
    await asyncio.sleep(0.2)
    assert len(origin.calls) == 2  # one background refresh for five stale answers
    _, h, b = await get(app)
    assert (h["x-cache"], b) == ("HIT", b"v2")


@pytest.mark.parametrize("failure", ["gateway_error", "status_503"])
async def test_stale_if_error(failure):
    state = {"down": False}

    def respond(scope):
        if state["down"]:
            if failure == "gateway_error":
                return GatewayError("timeout", "the upstream did not answer in time")
            return 503, {"content-type": "text/plain"}, [b"down"]
        return 200, {"cache-control": "max-age=1", "content-type": "text/plain"}, [b"good"]

    origin = Origin(respond)
    app = layer(origin, stale_if_error_secs=60)
    await get(app)
    for entry in app.store.bases["/r/{id} /r/1"]:
        entry.stored_at -= 5
        entry.view = None
    state["down"] = True
    s, h, b = await get(app)
    assert (s, h["x-cache"], b) == (200, "STALE", b"good")


async def test_no_stale_if_error_without_the_window():
    origin = Origin(ok(**{"cache-control": "max-age=1"}))
    app = layer(origin)
    await get(app)
    for entry in app.store.bases["/r/{id} /r/1"]:
        entry.stored_at -= 5
        entry.view = None
    origin.respond = lambda scope: GatewayError("timeout", "x")
    with pytest.raises(GatewayError):
        await get(app)


async def test_coalescing_fifty_misses_one_upstream_request():
    origin = Origin(ok(b"x" * 1000, **{"cache-control": "max-age=60"}))
    origin.delay = 0.05
    app = layer(origin)
    results = await asyncio.gather(*[get(app) for _ in range(50)])
    assert len(origin.calls) == 1
    assert all(b == b"x" * 1000 for _, _, b in results)
    assert sorted(h["x-cache"] for _, h, _ in results).count("MISS") == 1


async def test_beyond_max_size_streams_everything_and_stores_nothing():
    chunks = [bytes([65 + i]) * 1000 for i in range(10)]
    origin = Origin(lambda scope: (200, {"cache-control": "max-age=60", "content-type": "text/plain"}, chunks))
    app = layer(origin, max_size=5000)
    _, h, b = await get(app)
    assert b == b"".join(chunks) and h["x-cache"] == "MISS"
    _, h, b = await get(app)
    assert b == b"".join(chunks) and h["x-cache"] == "MISS"
    assert app.store.used == 0


async def test_unsafe_success_invalidates_every_variant_of_the_url():
    origin = Origin(ok(**{"cache-control": "max-age=60", "vary": "Accept"}))
    app = layer(origin)
    await get(app, headers={"accept": "a"})
    await get(app, headers={"accept": "b"})
    await get(app, path="/r/2")
    origin.respond = lambda scope: (500, {}, [b"no"]) if scope["method"] == "DELETE" and state["fail"] else \
        (204, {}, []) if scope["method"] == "DELETE" else ok(**{"cache-control": "max-age=60", "vary": "Accept"})(scope)
    state = {"fail": True}
    await get(app, method="DELETE")
    assert (await get(app, headers={"accept": "a"}))[1]["x-cache"] == "HIT"  # a failed DELETE changes nothing
    state["fail"] = False
    await get(app, method="DELETE")
    assert (await get(app, headers={"accept": "a"}))[1]["x-cache"] == "MISS"
    assert (await get(app, headers={"accept": "b"}))[1]["x-cache"] == "MISS"
    assert (await get(app, path="/r/2"))[1]["x-cache"] == "HIT"


async def test_authorization_rule():
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    app = layer(origin)
    await get(app, headers={"authorization": "Bearer a"})
    assert (await get(app, headers={"authorization": "Bearer a"}))[1]["x-cache"] == "MISS"  # not stored
    await get(app)  # stored from an anonymous request, without `public`
    assert (await get(app, headers={"authorization": "Bearer a"}))[1]["x-cache"] == "MISS"  # not for authorized
    origin.respond = ok(**{"cache-control": "public, max-age=60"})
    await get(app, path="/r/3", headers={"authorization": "Bearer a"})
    assert (await get(app, path="/r/3", headers={"authorization": "Bearer b"}))[1]["x-cache"] == "HIT"


async def test_cache_authenticated_keys_by_verified_identity():
    origin = Origin(lambda scope: (200, {"cache-control": "max-age=60"}, [scope["kairos.user"]["sub"].encode()]))
    app = layer(origin, cache_authenticated=True)

    async def as_user(sub):
        sent = []

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "method": "GET", "path": "/r/1", "raw_path": b"/r/1", "query_string": b"",
                 "headers": [(b"authorization", b"Bearer " + sub.encode())], "kairos.user": {"sub": sub}}
        await app(scope, None, send)
        return dict(sent[0]["headers"])[b"x-cache"], sent[1]["body"]

    assert await as_user("alice") == (b"MISS", b"alice")
    assert await as_user("alice") == (b"HIT", b"alice")
    assert await as_user("bob") == (b"MISS", b"bob")


async def test_key_extras_and_query_ignore():
    origin = Origin(lambda scope: (200, {"cache-control": "max-age=60"}, [dict(scope["headers"]).get(b"x-tenant", b"-")]))
    app = layer(origin, key={"extra": ["header:X-Tenant"], "query_ignore": ["utm_*", "fbclid"]})
    assert (await get(app, headers={"x-tenant": "a"}, query=b"q=1&utm_source=x"))[2] == b"a"
    s, h, b = await get(app, headers={"x-tenant": "a"}, query=b"q=1&fbclid=9")
    assert (h["x-cache"], b) == ("HIT", b"a")
    s, h, b = await get(app, headers={"x-tenant": "b"}, query=b"q=1")
    assert (h["x-cache"], b) == ("MISS", b"b")
    assert (await get(app, headers={"x-tenant": "a"}, query=b"q=2"))[1]["x-cache"] == "MISS"


async def test_memory_store_is_lru_by_bytes():
    store = MemoryStore(budget=3 * (1000 + 256 + 20))
    for i in range(4):
        await store.put(StoredEntry(f"/r k{i}", "", {}, 200, [(b"etag", b'"0123456789"')], b"x" * 1000,
                                    time.time(), time.time() + 60))
        if i == 2:
            await store.get("/r k0")  # k0 becomes the most recently used
    assert sorted(store.bases) == ["/r k0", "/r k2", "/r k3"]
    assert store.used <= store.budget
    assert await store.purge(route="/r", key_prefix="k2") == 1
    assert await store.purge() == 2 and store.used == 0


def test_config_block_and_errors():
    cfg = GatewayConfig.model_validate({
        "cache": {"enabled": True, "ttl_secs": 30},
        "routers": [{"external_path": "/a", "internal_path": "/a", "methods": ["GET"], "host": "http://h", "port": 1,
                     "cache": {"enabled": True, "backend": "redis", "max_size": 10}}],
    })
    assert cfg.policy(cfg.routers[0], "cache").backend == "redis"
    with pytest.raises(Exception) as err:
        GatewayConfig.model_validate({"cache": {"ttl_secs": -1, "backend": "disk", "max_size": 0,
                                                "key": {"extra": ["cookie:x"]}, "redis_url": "http://x"}})
    text = str(err.value)
    for path in ("cache.ttl_secs", "cache.backend", "cache.max_size", "cache.key.extra", "cache.redis_url"):
        assert path in text


def test_redis_url_is_the_caches_own_else_rate_limits_else_the_default():
    from kairos.cache.purge import redis_caches

    def router(path, **extra):
        return {"external_path": path, "internal_path": "/", "methods": ["GET"], "host": "http://h", "port": 1, **extra}

    cfg = GatewayConfig.model_validate({
        "cache": {"enabled": True, "backend": "redis"},
        "routers": [
            router("/own", cache={"enabled": True, "backend": "redis", "redis_url": "redis://own:1"},
                   rate_limit={"redis_url": "redis://rl:2"}),
            router("/rl", rate_limit={"redis_url": "redis://rl:2"}),
            router("/none"),
            router("/mem", cache={"enabled": True}),
        ],
    })
    default = lambda url: url or "redis://default:3"  # noqa: E731
    assert redis_caches(cfg, default) == {("redis://own:1", "kairos_cache:"): ["/own"],
                                          ("redis://rl:2", "kairos_cache:"): ["/rl"],
                                          ("redis://default:3", "kairos_cache:"): ["/none"]}
    assert redis_caches(cfg, default, route="/rl") == {("redis://rl:2", "kairos_cache:"): ["/rl"]}


async def test_purge_through_the_gateway_handle_reaches_every_route():
    stores = CacheStores()
    config = CacheConfig(enabled=True)
    origin = Origin(ok(**{"cache-control": "max-age=60"}))
    store, inflight, refreshing = stores.store_for(config, "")
    users = Cache(origin, CachePolicy("/users/{id}", config), store, inflight, refreshing)
    orders = Cache(origin, CachePolicy("/orders/{id}", config), store, inflight, refreshing)
    await get(users, path="/users/1")
    await get(users, path="/users/2")
    await get(orders, path="/orders/1")
    assert await stores.purge(route="/users/{id}", key_prefix="/users/1") == 1
    assert (await get(users, path="/users/2"))[1]["x-cache"] == "HIT"
    assert await stores.purge(route="/users/{id}") == 1
    assert (await get(orders, path="/orders/1"))[1]["x-cache"] == "HIT"
    assert await stores.purge() == 1
    assert (await get(orders, path="/orders/1"))[1]["x-cache"] == "MISS"


async def test_an_upstream_age_counts_against_freshness():
    origin = Origin(ok(**{"cache-control": "max-age=60", "age": "50"}))
    app = layer(origin)
    await get(app)
    _, h, _ = await get(app)
    assert h["x-cache"] == "HIT" and 50 <= int(h["age"]) <= 51
    origin.respond = ok(**{"cache-control": "max-age=60", "age": "70"})
    await get(app, path="/r/old")
    _, h, _ = await get(app, path="/r/old")
    assert h["x-cache"] == "MISS" and len(origin.calls) == 3


async def test_a_hit_carries_one_age_and_one_x_cache_of_its_own():
    origin = Origin(ok(**{"cache-control": "max-age=60", "age": "5", "x-cache": "HIT from upstream"}))
    app = layer(origin)
    await get(app)
    entry = (await app.store.get("/r/{id} /r/1"))[0]
    assert not [n for n, _ in entry.headers if n in (b"age", b"x-cache")]  # recorded without them
    sent = []

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/r/1", "raw_path": b"/r/1", "query_string": b"",
               "headers": []}, None, send)
    own = [(n, v) for n, v in sent[0]["headers"] if n in (b"age", b"x-cache")]
    assert [n for n, _ in own] == [b"age", b"x-cache"] and own[1][1] == b"HIT" and 5 <= int(own[0][1]) <= 6


async def test_a_hit_is_compressed_once_per_coding(monkeypatch):
    import gzip

    from kairos.config.compression import CompressionConfig
    from kairos.middleware import compression

    calls = []
    real = compression.compress_whole
    monkeypatch.setattr(compression, "compress_whole", lambda *a: calls.append(a[0]) or real(*a))
    body = b"compress me " * 200
    cache = layer(Origin(ok(body, **{"cache-control": "max-age=60"})))
    policy = compression.CompressionPolicy(CompressionConfig(enabled=True, algorithms=["gzip", "br"]))
    app = compression.Compression(cache, policy)
    results = [await get(app, headers={"accept-encoding": "gzip"}) for _ in range(3)]
    assert [h["x-cache"] for _, h, _ in results] == ["MISS", "HIT", "HIT"]
    assert all(gzip.decompress(b) == body for _, _, b in results)
    assert calls == ["gzip", "gzip"]  # the miss, then the first hit; the second hit reused it
    await get(app, headers={"accept-encoding": "br"})
    assert calls == ["gzip", "gzip", "br"]
