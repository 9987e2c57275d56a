"""In-memory rate limiting: admit counts and Retry-After per window type, headers, keys per strategy, concurrency."""

from __future__ import annotations

import asyncio

import pytest
from jose import jwt as jose_jwt
from prometheus_client import REGISTRY

from edge_support import SECRET, claims, client_for, inproc, route
from kairos.ratelimit import MemoryTokenBucket
import kairos.ratelimit.limiters as limiters


def rl(**over):
    base = {"strategy": "PerIP", "requests_per_window": 3, "burst_allowance": 2, "window_duration": 60,
            "window_type": "FixedWindow"}
    base.update(over)
    return base


async def statuses(c, path="/api", n=1, **kw):
    return [(await c.get(path, **kw)).status_code for _ in range(n)]


@pytest.mark.parametrize("window_type", ["FixedWindow", "SlidingWindow"])
async def test_windows_admit_limit_plus_burst(upstream, window_type):
    async with inproc({"rate_limit": rl(window_type=window_type), "routers": [route(upstream)]}) as c:
        seen = []
        for _ in range(5):
            r = await c.get("/api")
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit"] == "5"
            seen.append(int(r.headers["x-ratelimit-remaining"]))
            assert 1 <= int(r.headers["x-ratelimit-reset"]) <= 60
        assert seen == [4, 3, 2, 1, 0]
        r = await c.get("/api")
        assert r.status_code == 429
        assert r.json()["type"] == "rate_limit_exceeded"
        retry = int(r.headers["retry-after"])
        if window_type == "FixedWindow":
            assert 59 <= retry <= 60  # the window started with the first request
        else:
            assert 1 <= retry <= 60  # limits' sliding counter: until the current slot ends
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert r.headers["x-ratelimit-reset"] == str(retry)


async def test_token_bucket_starts_with_requests_per_window(upstream):
    # capacity 5, starts with 3 tokens, refills 3/30 s = one token per 10 s
    config = {"rate_limit": rl(window_type="TokenBucket", window_duration=30), "routers": [route(upstream)]}
    async with inproc(config) as c:
        assert await statuses(c, n=3) == [200] * 3
        r = await c.get("/api")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "10"
        assert r.headers["x-ratelimit-limit"] == "5"


def test_token_bucket_refill_and_capacity(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(limiters.time, "monotonic", lambda: clock[0])
    bucket = MemoryTokenBucket(capacity=5, initial=3, rate=0.5)  # a token every 2 s
    assert [bucket.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    d = bucket.hit("k")
    assert not d.allowed and d.reset == 2
    clock[0] += 1.0
    d = bucket.hit("k")
    assert not d.allowed and d.reset == 1
    clock[0] += 1.0
    assert bucket.hit("k").allowed
    clock[0] += 3600  # a long pause refills to capacity (requests_per_window + burst), never beyond
    assert [bucket.hit("k").allowed for _ in range(6)] == [True] * 5 + [False]
    assert bucket.hit("other").remaining == 2  # a new key starts with `initial`


async def test_strategy_keys(upstream):
    token = {u: jose_jwt.encode(claims(sub=u), SECRET) for u in ("alice", "bob")}
    config = {
        "jwt": {"secret": SECRET},
        "rate_limit": rl(requests_per_window=2, burst_allowance=0),
        "routers": [
            route(upstream, "/ip-a"),
            route(upstream, "/ip-b"),
            route(upstream, "/iproute-a", rate_limit=rl(requests_per_window=2, burst_allowance=0, strategy="PerIPAndRoute")),
            route(upstream, "/iproute-b", rate_limit=rl(requests_per_window=2, burst_allowance=0, strategy="PerIPAndRoute")),
            route(upstream, "/route", rate_limit=rl(requests_per_window=2, burst_allowance=0, strategy="PerRoute")),
            route(upstream, "/user", auth_required=True, rate_limit=rl(requests_per_window=2, burst_allowance=0, strategy="PerUser")),
            route(upstream, "/user-open", rate_limit=rl(requests_per_window=2, burst_allowance=0, strategy="PerUser")),
            route(upstream, "/hdr", rate_limit=rl(requests_per_window=2, burst_allowance=0, strategy={"PerHeader": "X-Api-Key"})),
        ],
    }
    async with inproc(config, client_ip="10.0.0.1") as a:
        async with client_for(a.app, "10.0.0.2") as b:
            # PerIP (inherited top-level block): shared across the routes that inherit it, per address.
            assert await statuses(a, "/ip-a") + await statuses(a, "/ip-b") + await statuses(a, "/ip-a") == [200, 200, 429]
            assert await statuses(b, "/ip-b", 2) == [200, 200]
            # PerIPAndRoute: per address and per route.
            assert await statuses(a, "/iproute-a", 3) == [200, 200, 429]
            assert await statuses(a, "/iproute-b", 1) == [200]
            assert await statuses(b, "/iproute-a", 1) == [200]
            # PerRoute: every client shares one counter.
            assert await statuses(a, "/route") + await statuses(b, "/route", 2) == [200, 200, 429]
            # PerUser: the verified sub, whatever the address.
            h = {u: {"authorization": f"Bearer {t}"} for u, t in token.items()}
            assert await statuses(a, "/user", headers=h["alice"]) + await statuses(b, "/user", 2, headers=h["alice"]) == [200, 200, 429]
            assert await statuses(a, "/user", 2, headers=h["bob"]) == [200, 200]
            # ... and the client address when no one is authenticated.
            assert await statuses(a, "/user-open", 3) == [200, 200, 429]
            assert await statuses(b, "/user-open", 1) == [200]
            # PerHeader: the header's value; its absence falls back to the address.
            assert await statuses(a, "/hdr", 3, headers={"x-api-key": "k1"}) == [200, 200, 429]
            assert await statuses(a, "/hdr", 2, headers={"x-api-key": "k2"}) == [200, 200]
            assert await statuses(b, "/hdr", 3) == [200, 200, 429]


async def test_500_concurrent_requests_never_exceed_limit(upstream):
    config = {"rate_limit": rl(requests_per_window=50, burst_allowance=0, window_type="SlidingWindow"),
              "routers": [route(upstream)]}
    before = REGISTRY.get_sample_value("kairos_ratelimited_total", {"route": "/api"}) or 0
    async with inproc(config) as c:
        results = await asyncio.gather(*(c.get("/api") for _ in range(500)))
    codes = [r.status_code for r in results]
    assert codes.count(200) == 50 and codes.count(429) == 450
    assert REGISTRY.get_sample_value("kairos_ratelimited_total", {"route": "/api"}) == before + 450


async def test_health_is_never_limited(upstream):
    config = {"rate_limit": rl(requests_per_window=1, burst_allowance=0), "routers": [route(upstream)]}
    async with inproc(config) as c:
        assert await statuses(c, "/health", 5) == [200] * 5
        assert await statuses(c, "/api", 2) == [200, 429]


@pytest.mark.parametrize("name", ["jwt-hs256", "jwt-jwks", "ratelimit-memory", "ratelimit-redis"])
def test_example_configs_are_valid(name):
    from pathlib import Path

    from kairos.config import load_config

    load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.json", use_env=False)


async def test_counters_and_verifiers_survive_a_reload(upstream):
    from kairos.config import parse_config

    config = {"jwt": {"secret": SECRET}, "rate_limit": rl(requests_per_window=2, burst_allowance=0),
              "routers": [route(upstream), route(upstream, "/p", auth_required=True)]}
    async with inproc(config) as c:
        gw = c.app.state.gateway
        verifier = next(iter(gw.edge.verifiers.values()), None)
        assert verifier is not None
        assert await statuses(c, n=2) == [200, 200]
        gw.swap(parse_config({**config, "routers": config["routers"] + [route(upstream, "/other")]}))
        assert await statuses(c, n=1) == [429]  # same block, same counters
        assert next(iter(gw.edge.verifiers.values()), None) is verifier
        gw.swap(parse_config({**config, "jwt": None, "routers": [route(upstream)]}))
        assert gw.edge.verifiers == {}
