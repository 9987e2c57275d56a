"""The response cache through real gateway processes, a real upstream and a real redis-server:
directives, Vary, revalidation with 304, stale-while-revalidate and stale-if-error with the
upstream down, coalescing (in a process and across two processes sharing Redis), big bodies,
invalidation, compressed hits, the Redis outage, purge, metrics."""

from __future__ import annotations

import asyncio
import gzip
import time

import httpx
import pytest
from aiohttp import web

from tests.scripted_upstream import ScriptedUpstream

ROUTE = "/c/{rest:path}"


@pytest.fixture
def scripted():
    up = ScriptedUpstream().start()
    yield up
    up.stop()


def config(up, cache=None, **route_extra):
    return {
        "version": 1,
        "cache": {"enabled": True, "ttl_secs": 60, **(cache or {})},
        "routers": [
            {"external_path": ROUTE, "internal_path": "/{rest}", "methods": ["GET", "HEAD", "POST", "DELETE"],
             "backends": [up.backend()], **route_extra},
            {"external_path": "/z/{rest:path}", "internal_path": "/{rest}", "methods": ["GET"],
             "backends": [up.backend()], "compression": {"enabled": True, "min_size": 10}},
        ],
    }


def counter_handler(headers, body=b"hello", status=200):
    n = {"v": 0}

    def handle(request):
        n["v"] += 1
        return web.Response(status=status, body=body if callable(body) is False else body(n["v"]),
                            headers={"Content-Type": "text/plain", **headers})

    return handle


def get(c, url, **headers):
    return c.get(url, headers=headers)


def test_directives_and_vary(gateway, scripted, sync_client):
    cases = {
        "/max-age": ({"Cache-Control": "max-age=60"}, True),
        "/s-maxage": ({"Cache-Control": "s-maxage=60, max-age=0"}, True),
        "/silent": ({}, True),  # ttl_secs
        "/no-store": ({"Cache-Control": "no-store"}, False),
        "/private": ({"Cache-Control": "private, max-age=60"}, False),
        "/cookie": ({"Cache-Control": "max-age=60", "Set-Cookie": "sid=secret"}, False),
        "/vary-star": ({"Cache-Control": "max-age=60", "Vary": "*"}, False),
        "/expired": ({"Expires": "Thu, 01 Jan 1970 00:00:00 GMT"}, False),
    }
    for path, (headers, _) in cases.items():
        scripted.on(path, counter_handler(headers))
    gw = gateway(config(scripted))
    for path, (_, cached) in cases.items():
        first = sync_client.get(gw.url + "/c" + path)
        second = sync_client.get(gw.url + "/c" + path)
        assert first.headers["x-cache"] == "MISS", path
        assert second.text == "hello"
        assert (second.headers["x-cache"] == "HIT") is cached, path
        assert scripted.hits[path] == (1 if cached else 2), path
        if cached:
            assert second.headers["age"] in ("0", "1")
    r = sync_client.get(gw.url + "/c/cookie")
    assert r.headers.get("set-cookie") == "sid=secret"  # relayed, never stored

    # Vary: Accept-Encoding. The upstream compresses itself; a client without gzip never gets gzip.
    def varying(request):
        gz = "gzip" in request.headers.get("Accept-Encoding", "")
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding", "Content-Type": "text/plain"}
        if gz:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=gzip.compress(b"zipped") if gz else b"plain", headers=headers)

    scripted.on("/vary", varying)
    with httpx.Client(timeout=10, trust_env=False) as c:
        assert c.get(gw.url + "/c/vary", headers={"accept-encoding": "gzip"}).content == b"zipped"
        r = c.get(gw.url + "/c/vary", headers={"accept-encoding": "identity"})
        assert (r.content, r.headers["x-cache"], r.headers.get("content-encoding")) == (b"plain", "MISS", None)
        r = c.get(gw.url + "/c/vary", headers={"accept-encoding": "identity"})
        assert (r.content, r.headers["x-cache"]) == (b"plain", "HIT")
        r = c.get(gw.url + "/c/vary", headers={"accept-encoding": "gzip"})
        assert (r.content, r.headers["x-cache"]) == (b"zipped", "HIT")
    assert scripted.hits["/vary"] == 2


def test_revalidation_conditional_clients_invalidation_and_big_bodies(gateway, scripted, sync_client):
    version = {"n": 0}

    def validated(request):
        version["n"] += 1
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=0",
                                                     "X-Seen": str(version["n"])})
        return web.Response(body=b"document", headers={"ETag": '"v1"', "Cache-Control": "max-age=0",
                                                       "Content-Type": "text/plain", "X-Seen": str(version["n"])})

    big = bytes(range(256)) * 4096  # 1 MiB

    async def streamed(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Cache-Control": "max-age=60"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(big), 65536):
            await resp.write(big[i:i + 65536])
        await resp.write_eof()
        return resp

    scripted.on("/doc", validated)
    scripted.on("/big", streamed)
    scripted.on("/fresh", counter_handler({"Cache-Control": "max-age=60", "ETag": '"f"'}))
    scripted.on("/item", lambda r: web.Response(status=204) if r.method == "POST"
                else web.Response(body=b"item", headers={"Cache-Control": "max-age=60"}))
    gw = gateway(config(scripted, cache={"max_size": 100_000}))

    assert sync_client.get(gw.url + "/c/doc").headers["x-cache"] == "MISS"
    r = sync_client.get(gw.url + "/c/doc")
    assert (r.status_code, r.text, r.headers["x-cache"], r.headers["x-seen"]) == (200, "document", "REVALIDATED", "2")
    assert scripted.seen["/doc"][-1]["If-None-Match"] == '"v1"'

    sync_client.get(gw.url + "/c/fresh")
    r = sync_client.get(gw.url + "/c/fresh", headers={"If-None-Match": '"f"'})
    assert (r.status_code, r.content, r.headers["x-cache"]) == (304, b"", "HIT")
    assert scripted.hits["/fresh"] == 1

    for _ in range(2):  # beyond max_size: streamed whole every time, never stored
        r = sync_client.get(gw.url + "/c/big")
        assert r.content == big and r.headers["x-cache"] == "MISS"
    assert scripted.hits["/big"] == 2

    sync_client.get(gw.url + "/c/item")
    assert sync_client.get(gw.url + "/c/item").headers["x-cache"] == "HIT"
    assert sync_client.post(gw.url + "/c/item").status_code == 204
    assert sync_client.get(gw.url + "/c/item").headers["x-cache"] == "MISS"

    metrics = sync_client.get(gw.url + "/metrics").text
    assert f'kairos_cache_requests_total{{result="revalidated",route="{ROUTE}"}}' in metrics
    assert 'kairos_cache_entries{backend="memory"}' in metrics


def test_hits_are_compressed_per_client(gateway, scripted, sync_client):
    scripted.on("/text", counter_handler({"Cache-Control": "max-age=60"}, body=b"compress me " * 50))
    gw = gateway(config(scripted))
    with httpx.Client(timeout=10, trust_env=False) as c:
        for expected in ("MISS", "HIT"):
            with c.stream("GET", gw.url + "/z/text", headers={"accept-encoding": "gzip"}) as r:
                raw = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == "gzip" and r.headers.get("x-cache", expected) == expected
            assert gzip.decompress(raw) == b"compress me " * 50
        r = c.get(gw.url + "/z/text", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in r.headers and r.content == b"compress me " * 50
    assert scripted.hits["/text"] == 1


async def test_fifty_concurrent_misses_cost_one_upstream_request(gateway, scripted):
    async def slow(request):
        await asyncio.sleep(0.3)
        return web.Response(body=b"once", headers={"Cache-Control": "max-age=60"})

    scripted.on("/slow", slow)
    gw = gateway(config(scripted))
    async with httpx.AsyncClient(timeout=20, trust_env=False, limits=httpx.Limits(max_connections=60)) as c:
        results = await asyncio.gather(*[c.get(gw.url + "/c/slow") for _ in range(50)])
    assert all(r.status_code == 200 and r.content == b"once" for r in results)
    assert scripted.hits["/slow"] == 1


def test_stale_while_revalidate_and_stale_if_error_with_the_upstream_down(gateway, scripted, sync_client):
    scripted.on("/swr", counter_handler({"Cache-Control": "max-age=1, stale-while-revalidate=60"},
                                        body=lambda n: b"v%d" % n))
    scripted.on("/sie", counter_handler({"Cache-Control": "max-age=1"}, body=lambda n: b"v%d" % n))
    gw = gateway(config(scripted, cache={"stale_if_error_secs": 60}))
    assert sync_client.get(gw.url + "/c/swr").text == "v1"
    assert sync_client.get(gw.url + "/c/sie").text == "v1"
    time.sleep(1.2)  # both entries go stale (max-age=1)
    r = sync_client.get(gw.url + "/c/swr")
    assert (r.text, r.headers["x-cache"]) == ("v1", "STALE")
    deadline = time.monotonic() + 10
    while scripted.hits["/swr"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    r = sync_client.get(gw.url + "/c/swr")
    assert (r.text, r.headers["x-cache"]) == ("v2", "HIT")
    assert scripted.hits["/swr"] == 2

    scripted.stop()  # connection refused from now on
    r = sync_client.get(gw.url + "/c/sie")
    assert (r.status_code, r.text, r.headers["x-cache"]) == (200, "v1", "STALE")
    r = sync_client.get(gw.url + "/c/never-cached")
    assert r.status_code == 502


# --------------------------------------------------------------------------- Redis
def redis_config(up, redis_url, **cache):
    return config(up, cache={"backend": "redis", "redis_url": redis_url, **cache})


async def test_two_processes_share_entries_and_coalesce_through_redis(gateway, scripted, redis_clean):
    async def slow(request):
        await asyncio.sleep(0.5)
        return web.Response(body=b"shared", headers={"Cache-Control": "max-age=60"})

    scripted.on("/slow", slow)
    scripted.on("/doc", counter_handler({"Cache-Control": "max-age=60"}))
    cfg = redis_config(scripted, redis_clean)
    a, b = gateway(cfg), gateway(cfg)
    async with httpx.AsyncClient(timeout=20, trust_env=False, limits=httpx.Limits(max_connections=60)) as c:
        results = await asyncio.gather(*[c.get((a, b)[i % 2].url + "/c/slow") for i in range(50)])
        assert all(r.status_code == 200 and r.content == b"shared" for r in results)
        assert scripted.hits["/slow"] == 1
        assert (await c.get(a.url + "/c/doc")).headers["x-cache"] == "MISS"
        assert (await c.get(b.url + "/c/doc")).headers["x-cache"] == "HIT"
    assert 0 < int(redis_clean.command("PTTL", f"kairos_cache:{ROUTE} /c/doc")) <= 60_000


def test_redis_outage_is_a_bypass_and_recovers_and_purge(gateway, scripted, redis_clean, sync_client, kairos_cli):
    scripted.on("/doc", counter_handler({"Cache-Control": "max-age=60"}))
    gw = gateway(redis_config(scripted, redis_clean))
    assert sync_client.get(gw.url + "/c/doc").headers["x-cache"] == "MISS"
    redis_clean.stop()
    try:
        r = sync_client.get(gw.url + "/c/doc")
        assert (r.status_code, r.text, r.headers["x-cache"]) == (200, "hello", "BYPASS")
        gw.wait_for_log(lambda rec: rec.get("event") == "cache_backend_unavailable")
        assert "kairos_cache_backend_errors_total 1.0" in sync_client.get(gw.url + "/metrics").text
    finally:
        redis_clean.start()
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        seen.append(sync_client.get(gw.url + "/c/doc").headers["x-cache"])
        if seen[-1] == "HIT":
            break
        time.sleep(0.1)
    assert seen[-1] == "HIT", seen

    # `kairos cache purge CONFIG --route PATH` empties it from outside the gateway.
    done = kairos_cli("cache", "purge", gw.config_path, "--route", ROUTE)
    assert done.returncode == 0, done.stderr
    assert "purged 1" in done.stdout
    assert sync_client.get(gw.url + "/c/doc").headers["x-cache"] == "MISS"
    bad = kairos_cli("cache", "purge", gw.config_path, "--route", "/nope")
    assert bad.returncode == 1 and "no route" in bad.stderr
