"""Rate limiting shared through a real redis-server: exact counts, concurrency, two gateways, outage."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from prometheus_client import REGISTRY

from edge_support import inproc, route


def rl(redis_url, **over):
    base = {"strategy": "PerIP", "requests_per_window": 3, "burst_allowance": 2, "window_duration": 60,
            "window_type": "FixedWindow", "enable_redis": True, "redis_url": redis_url,
            "redis_key_prefix": "kt"}
    base.update(over)
    return base


@pytest.mark.parametrize("window_type,admitted,retry", [
    ("FixedWindow", 5, (59, 60)),
    ("SlidingWindow", 5, (1, 60)),
    ("TokenBucket", 3, (20, 20)),  # starts with 3 tokens; 3 per 60 s = one token per 20 s
])
async def test_redis_window_types(upstream, redis_clean, window_type, admitted, retry):
    config = {"rate_limit": rl(redis_clean, window_type=window_type), "routers": [route(upstream)]}
    async with inproc(config) as c:
        codes = []
        for _ in range(admitted + 2):
            r = await c.get("/api")
            codes.append(r.status_code)
        assert codes == [200] * admitted + [429, 429]
        assert r.headers["x-ratelimit-limit"] == "5"
        assert retry[0] <= int(r.headers["retry-after"]) <= retry[1]
    assert any(k.startswith("kt") for k in redis_clean.keys())


@pytest.mark.parametrize("window_type", ["FixedWindow", "TokenBucket"])
async def test_redis_500_concurrent_never_exceed(upstream, redis_clean, window_type, caplog, monkeypatch):
    # This checks atomicity, not timeouts: on a loaded CI machine 500 requests in one loop may need longer.
    monkeypatch.setattr("kairos.ratelimit.limiters.REDIS_DEADLINE_S", 10.0)
    config = {"rate_limit": rl(redis_clean, window_type=window_type, requests_per_window=40, burst_allowance=0),
              "routers": [route(upstream)]}
    async with inproc(config) as c:
        results = await asyncio.gather(*(c.get("/api") for _ in range(500)))
    codes = [r.status_code for r in results]
    problems = [r.fields for r in caplog.records if hasattr(r, "fields")]
    assert codes.count(200) == 40 and codes.count(429) == 460, problems


def test_two_gateways_share_one_redis(upstream, redis_clean, gateway):
    config = {"rate_limit": rl(redis_clean, requests_per_window=10, burst_allowance=2, window_type="SlidingWindow"),
              "routers": [route(upstream)]}
    g1, g2 = gateway(config), gateway(config)
    admitted = 0
    with httpx.Client(timeout=10, trust_env=False) as c:
        for i in range(30):
            r = c.get((g1 if i % 2 else g2).url + "/api")
            assert r.status_code in (200, 429), r.text
            admitted += r.status_code == 200
    assert admitted == 12


async def test_redis_outage_allow_and_deny(upstream, redis_server, caplog):
    redis_server.start()
    redis_server.flush()
    config = {
        "rate_limit": rl(redis_server, requests_per_window=1000, burst_allowance=0),
        "routers": [route(upstream, "/allow"),
                    route(upstream, "/deny", rate_limit=rl(redis_server, requests_per_window=1000, on_redis_error="deny"))],
    }
    errors = lambda: REGISTRY.get_sample_value("kairos_ratelimit_backend_errors_total") or 0  # noqa: E731
    caplog.set_level(logging.INFO, logger="kairos")
    async with inproc(config) as c:
        for path in ("/allow", "/deny"):
            r = await c.get(path)
            assert r.status_code == 200 and "x-ratelimit-remaining" in r.headers
        before = errors()
        redis_server.stop()
        try:
            for _ in range(10):
                r = await c.get("/allow")
                assert r.status_code == 200 and "x-ratelimit-remaining" not in r.headers
                r = await c.get("/deny")
                assert r.status_code == 503 and r.json()["type"] == "rate_limit_unavailable"
            assert errors() >= before + 20
            logged = [rec for rec in caplog.records if rec.getMessage() == "ratelimit_backend_error"]
            assert len(logged) == 1  # once per interval, not once per request
        finally:
            redis_server.start()
        # Recovers by itself (after the short pause, the next request tries Redis again).
        deadline = time.monotonic() + 10
        while True:
            r = await c.get("/deny")
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, "did not recover"
            await asyncio.sleep(0.1)
        assert "x-ratelimit-remaining" in r.headers
        assert "x-ratelimit-remaining" in (await c.get("/allow")).headers
        assert any(rec.getMessage() == "ratelimit_backend_recovered" for rec in caplog.records)


def test_outage_under_traffic_through_a_real_gateway(upstream, redis_server, gateway):
    """Requests keep flowing while redis-server is stopped and restarted (on_redis_error: allow)."""
    redis_server.start()
    config = {"rate_limit": rl(redis_server, requests_per_window=100000, burst_allowance=0),
              "routers": [route(upstream)]}
    gw = gateway(config)
    with httpx.Client(timeout=10, trust_env=False) as c:
        assert "x-ratelimit-limit" in c.get(gw.url + "/api").headers
        redis_server.stop()
        try:
            for _ in range(20):
                assert c.get(gw.url + "/api").status_code == 200
        finally:
            redis_server.start()
        deadline = time.monotonic() + 10
        while "x-ratelimit-limit" not in c.get(gw.url + "/api").headers:
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)
    errors = [rec for rec in gw.log_records() if rec.get("event") == "ratelimit_backend_error"]
    assert len(errors) == 1 and "redis://127.0.0.1" in errors[0]["redis"]
