"""Resilience against real upstreams on loopback and a real `kairos serve` subprocess.

No test asserts a duration: behaviour is read from X-Upstream headers, upstream
request counts and the gateway's JSON log events.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from kairos.app import Gateway as InProcessGateway
from kairos.config import parse_config
from tests.ops_helpers import metric_value, wait_until

pytestmark = pytest.mark.timeout(60)


def route(upstreams, external="/svc/{rest:path}", internal="/{rest}", methods=("GET", "POST"), **extra) -> dict:
    backends = [u.backend() if not isinstance(u, dict) else u for u in upstreams]
    return {"external_path": external, "internal_path": internal, "methods": list(methods), "backends": backends,
            **extra}


def config(*routes, **top) -> dict:
    return {"version": 1, "logging": {"level": "info", "access_log": False}, "routers": list(routes), **top}


def seq(gw, n, path="/svc/echo", **kw) -> list[str]:
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        return [c.get(path, **kw).headers.get("x-upstream") for _ in range(n)]


def scrape(gw, name, **labels) -> float:
    return metric_value(httpx.get(gw.url + "/metrics", trust_env=False).text, name, **labels)


def events(gw, name) -> list[dict]:
    return [r for r in gw.log_records() if r.get("event") == name]


# ---------------------------------------------------------------------------- balancing
def test_round_robin_and_smooth_weighted_sequences(make_upstream, gateway):
    a, b, c = make_upstream(3)
    gw = gateway(config(
        route([a, b, c]),
        route([a.backend(5), b.backend(1), c.backend(1)], external="/w/{rest:path}", load_balancing_strategy="weighted"),
    ))
    assert seq(gw, 9) == ["up0", "up1", "up2"] * 3
    assert seq(gw, 14, "/w/echo") == ["up0", "up0", "up1", "up0", "up2", "up0", "up0"] * 2


def test_least_connections_avoids_the_slow_backend(make_upstream, gateway):
    slow, fast = make_upstream(2)
    slow.set_delay(1500)
    gw = gateway(config(route([slow, fast], load_balancing_strategy="least_connections")))

    async def scenario():
        async with httpx.AsyncClient(base_url=gw.url, timeout=10, trust_env=False) as c:
            pending = []
            while slow.count == 0:  # park at least one request on the slow backend
                pending.append(asyncio.create_task(c.get("/svc/echo")))
                await asyncio.sleep(0.1)
            parked = slow.count
            got = [(await c.get("/svc/echo")).headers["x-upstream"] for _ in range(10)]
            await asyncio.gather(*pending)
            return parked, got

    parked, got = asyncio.run(scenario())
    assert got == ["up1"] * 10
    assert slow.count == parked


def test_ip_hash_header_key_is_sticky(make_upstream, gateway):
    ups = make_upstream(3)
    gw = gateway(config(route(ups, load_balancing_strategy="ip_hash", hash_on="header:X-Tenant")))
    for tenant in ("acme", "globex", "initech", "umbrella"):
        got = set(seq(gw, 5, headers={"x-tenant": tenant}))
        assert len(got) == 1


# ---------------------------------------------------------------------------- health
def test_active_health_checks_mark_down_and_up(make_upstream, gateway):
    a, b = make_upstream(2)
    hc = {"path": "/healthz", "interval_ms": 100, "timeout_ms": 500, "unhealthy_threshold": 2, "healthy_threshold": 2}
    gw = gateway(config(route([a, b], health_check=hc)))
    wait_until(lambda: a.health_count >= 1 and b.health_count >= 1)
    a.healthy = False
    gw.wait_for_log(lambda r: r.get("event") == "backend_unhealthy" and r.get("backend", "").endswith(f":{a.port}"))
    assert seq(gw, 4) == ["up1"] * 4
    assert scrape(gw, "kairos_backend_up", backend=a.url) == 0
    assert scrape(gw, "kairos_backend_up", backend=b.url) == 1
    a.healthy = True
    gw.wait_for_log(lambda r: r.get("event") == "backend_healthy" and r.get("backend", "").endswith(f":{a.port}"))
    assert sorted(seq(gw, 4)) == ["up0", "up0", "up1", "up1"]
    assert scrape(gw, "kairos_backend_up", backend=a.url) == 1


def test_all_unhealthy_is_503_or_panic(make_upstream, gateway):
    (a,) = make_upstream(1)
    a.healthy = False
    hc = {"path": "/healthz", "interval_ms": 100, "unhealthy_threshold": 1}
    gw = gateway(config(route([a], health_check=hc), route([a], external="/panic/{rest:path}", panic_mode=True)))
    gw.wait_for_log(lambda r: r.get("event") == "backend_unhealthy")
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        r = c.get("/svc/echo")
        assert r.status_code == 503 and r.json()["type"] == "no_healthy_backend"
        assert c.get("/panic/echo").status_code == 200
    assert a.count == 1


def test_outlier_ejection_and_doubling(make_upstream, gateway):
    a, b = make_upstream(2)
    od = {"consecutive_failures": 2, "base_ejection_ms": 300, "max_ejection_ms": 10000}
    gw = gateway(config(route([a, b], outlier_detection=od, circuit_breaker={"enabled": False})))
    for round_ in (1, 2):
        a.fail_next(2)
        got = seq(gw, 4)
        assert got == ["up0", "up1", "up0", "up1"]  # two 503s from up0, then ejected
        assert seq(gw, 4) == ["up1"] * 4
        gw.wait_for_log(lambda r: r.get("event") == "backend_unejected" and len(events(gw, "backend_unejected")) >= round_)
    assert [e["ejection_ms"] for e in events(gw, "backend_ejected")] == [300, 600]
    assert "up0" in seq(gw, 2)


# ---------------------------------------------------------------------------- breaker
def test_breaker_open_half_open_probe_limit_closed(make_upstream, gateway):
    (a,) = make_upstream(1)
    cb = {"failure_threshold": 2, "success_threshold": 1, "reset_timeout_ms": 300, "half_open_max_requests": 1}
    gw = gateway(config(route([a], circuit_breaker=cb)))
    a.fail_next(2)
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        assert [c.get("/svc/echo").status_code for _ in range(2)] == [503, 503]
        r = c.get("/svc/echo")
        assert r.status_code == 503 and r.json()["type"] == "circuit_open"
        assert int(r.headers["retry-after"]) >= 1
        assert a.count == 2  # no network while open
        assert scrape(gw, "kairos_circuit_breaker_state", backend=a.url) == 1  # open
    time.sleep(0.35)  # let reset_timeout_ms pass (no duration is asserted)
    a.set_delay(400)

    async def two_at_once():
        async with httpx.AsyncClient(base_url=gw.url, timeout=10, trust_env=False) as c:
            before = a.count
            first = asyncio.create_task(c.get("/svc/echo"))
            await asyncio.to_thread(a.wait_for_count, before + 1, 5.0)  # the probe is at the backend
            second = await c.get("/svc/echo")
            return await first, second

    probe, refused = asyncio.run(two_at_once())
    assert probe.status_code == 200
    assert refused.status_code == 503 and refused.json()["type"] == "circuit_open"
    a.set_delay(0)
    assert seq(gw, 3) == ["up0"] * 3  # closed again
    assert scrape(gw, "kairos_circuit_breaker_state", backend=a.url) == 0  # closed
    moves = [(e["from"], e["to"]) for e in events(gw, "circuit_breaker")]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


# ---------------------------------------------------------------------------- retries
RETRY = {"max_retries": 2, "initial_backoff_ms": 10, "jitter": "none"}


def test_no_retry_block_means_one_attempt(make_upstream, gateway):
    (a,) = make_upstream(1)
    gw = gateway(config(route([a])))
    a.fail_next(1)
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        assert c.get("/svc/echo").status_code == 503
        a.close_next(1)
        assert c.get("/svc/echo").status_code == 502
    assert a.count == 2


def test_retry_counts_and_different_backend(make_upstream, gateway):
    a, b = make_upstream(2)
    (solo,) = make_upstream(1)
    gw = gateway(config(
        route([a, b], retry=RETRY),
        route([solo], external="/solo/{rest:path}", retry=RETRY, circuit_breaker={"enabled": False}),
    ))
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        a.fail_next(1)
        r = c.get("/svc/echo")  # round robin starts at up0: fails, retried on up1
        assert r.status_code == 200 and r.headers["x-upstream"] == "up1"
        assert (a.count, b.count) == (1, 1)
        solo.fail_next(10)
        assert c.get("/solo/echo").status_code == 503
        assert solo.count == 3  # 1 + max_retries
        solo.reset()
        solo.fail_next(1)
        assert c.get("/solo/echo").status_code == 200
        assert solo.count == 2
    assert scrape(gw, "kairos_retries_total", route="/svc/{rest:path}", reason="status") == 1
    assert scrape(gw, "kairos_retries_total", route="/solo/{rest:path}", reason="status") == 3


def test_post_not_retried_after_send_but_retried_on_refused(make_upstream, gateway):
    (a,) = make_upstream(1)
    dead, live = make_upstream(2)
    dead.stop()  # its port now refuses connections
    gw = gateway(config(
        route([a], retry=RETRY, circuit_breaker={"enabled": False}),
        route([dead, live], external="/pair/{rest:path}", retry=RETRY),
    ))
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        assert c.post("/svc/reset", content=b"x" * 100).status_code == 502
        assert a.count == 1
        a.reset()
        assert c.get("/svc/reset").status_code == 502
        assert a.count == 3  # GET is idempotent: retried
        a.reset()
        a.close_next(1)
        assert c.post("/svc/echo", content=b"hello").status_code == 502
        assert a.count == 1
        r = c.post("/pair/upload", content=b"y" * 1000)  # up1 (dead) first: refused, never sent
        assert r.status_code == 200 and r.json() == {"body_len": 1000, "upstream": "up2"}


def test_large_streamed_body_not_replayed(make_upstream, gateway):
    (a,) = make_upstream(1)
    gw = gateway(config(route([a], retry={**RETRY, "retry_buffer_bytes": 1024}, methods=["PUT"],
                              circuit_breaker={"enabled": False})))
    a.fail_next(1)

    def chunks():
        for _ in range(8):
            yield b"z" * 1024

    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        assert c.put("/svc/upload", content=chunks()).status_code == 503
        assert a.count == 1
        a.fail_next(1)
        r = c.put("/svc/upload", content=b"s" * 1000)  # small: buffered, replayed
        assert r.status_code == 200 and r.json()["body_len"] == 1000
        assert a.count == 3


def test_retry_budget_exhaustion(make_upstream, gateway):
    a, b = make_upstream(2)
    nobudget = {**RETRY, "max_retries": 3, "budget_percent": 0, "min_retry_concurrency": 0}
    tight = {"max_retries": 1, "initial_backoff_ms": 0, "jitter": "none", "budget_percent": 0,
             "min_retry_concurrency": 1}
    off = {"enabled": False}
    gw = gateway(config(
        route([a], retry=nobudget, circuit_breaker=off),
        route([b], external="/tight/{rest:path}", retry=tight, circuit_breaker=off),
    ))
    a.fail_next(10)
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        assert c.get("/svc/echo").status_code == 503
    assert a.count == 1
    b.fail_next(100)
    b.set_delay(300)

    async def both():
        async with httpx.AsyncClient(base_url=gw.url, timeout=10, trust_env=False) as c:
            return await asyncio.gather(c.get("/tight/echo"), c.get("/tight/echo"))

    assert [r.status_code for r in asyncio.run(both())] == [503, 503]
    assert b.count == 3  # 2 first attempts + the one retry the budget allowed


def test_overall_deadline_bounds_attempts(make_upstream, gateway):
    (a,) = make_upstream(1)
    retry = {"max_retries": 10, "initial_backoff_ms": 0, "jitter": "none", "per_try_timeout_ms": 300}
    gw = gateway(config(route([a], retry=retry, timeout_ms=1000, circuit_breaker={"enabled": False})))
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        r = c.get("/svc/hang")
    assert r.status_code == 504
    assert 3 <= a.count <= 4  # 1000 ms / 300 ms per try, never the 11 max_retries would allow


# ---------------------------------------------------------------------------- reload keeps state
async def test_reload_keeps_backend_state_and_probes(make_upstream):
    a, b = make_upstream(2)
    hc = {"path": "/healthz", "interval_ms": 100}
    cfg = config(route([a, b], health_check=hc))
    gw = InProcessGateway(parse_config(cfg))
    await gw.start()
    try:
        backend_a = gw.runtime.backends[f"http://127.0.0.1:{a.port}"]
        breaker_a = backend_a.breaker
        tasks = dict(gw.health.tasks)
        assert len(tasks) == 2
        backend_a.in_flight = 7
        gw.swap(parse_config(cfg))
        assert gw.runtime.backends[backend_a.address] is backend_a and backend_a.breaker is breaker_a
        assert {k: t for k, (_, t) in gw.health.tasks.items()} == {k: t for k, (_, t) in tasks.items()}
        gw.swap(parse_config(config(route([a]))))  # b removed, a no longer probed
        await asyncio.sleep(0)
        assert gw.health.tasks == {}
        assert all(t.cancelled() or t.done() for _, t in tasks.values())
        assert gw.runtime.backends[backend_a.address].in_flight == 7
        gw.swap(parse_config(cfg))
        assert len(gw.health.tasks) == 2
    finally:
        await gw.aclose()
    assert gw.health.tasks == {}
