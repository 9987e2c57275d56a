"""Hot reload (file watch + SIGHUP) and graceful shutdown, against a real gateway subprocess."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx

from ops_helpers import config, metric_value, route, wait_until


def reloads(client: httpx.Client, gw, result: str = "success") -> float:
    return metric_value(client.get(gw.url + "/metrics").text, "kairos_config_reloads_total", result=result)


class Traffic(threading.Thread):
    """Keeps GETting `paths` until stopped; records every non-200 and every transport error."""

    def __init__(self, base: str, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.base, self.paths = base, paths
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10, trust_env=False) as c:
            i = 0
            while not self.stop_flag.is_set():
                path = self.paths[i % len(self.paths)]
                i += 1
                try:
                    r = c.get(self.base + path)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{path}: {r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{path}: {exc!r}")

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10)


def test_routes_added_changed_removed_under_traffic(make_upstream, gateway, sync_client):
    a, b = make_upstream(2)
    gw = gateway(config(route(a), route(a, external="/old/{id}")))
    traffic = [Traffic(gw.url, ["/api/1", "/api/2"]) for _ in range(3)]
    for t in traffic:
        t.start()
    try:
        wait_until(lambda: all(t.ok > 20 for t in traffic), what="traffic flowing")
        # add /new, move /api to upstream b, remove /old
        before = reloads(sync_client, gw)
        gw.rewrite_config(config(route(b), route(b, external="/new/{id}")))
        wait_until(lambda: reloads(sync_client, gw) > before, what="reload")
        assert sync_client.get(gw.url + "/new/1").status_code == 200
        assert sync_client.get(gw.url + "/old/1").status_code == 404
        seen_b = b.count
        wait_until(lambda: b.count > seen_b + 20, what="traffic on the new backend")
        r = sync_client.get(gw.url + "/api/9")
        assert r.headers["x-upstream"] == b.name
        # and back again
        before = reloads(sync_client, gw)
        gw.rewrite_config(config(route(a), route(a, external="/old/{id}")))
        wait_until(lambda: reloads(sync_client, gw) > before, what="second reload")
        assert sync_client.get(gw.url + "/old/1").status_code == 200
        seen_a = a.count
        wait_until(lambda: a.count > seen_a + 20, what="traffic back on the first backend")
    finally:
        for t in traffic:
            t.stop()
    assert sum(t.ok for t in traffic) > 100
    assert [f for t in traffic for f in t.failures] == []
    events = [r for r in gw.log_records() if r.get("event") == "config_reloaded"]
    assert events and events[0]["trigger"] == "file"


def test_broken_config_is_rejected_and_fixing_it_reloads(upstream, gateway, sync_client):
    good = config(route(upstream))
    gw = gateway(good)
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    gw.rewrite_config('{"version": 1, "routers": [ {"external_path": ')  # caught half-written
    wait_until(lambda: reloads(sync_client, gw, "error") >= 1, what="rejected reload")
    rec = gw.wait_for_log(lambda r: r.get("event") == "config_reload_failed")
    assert rec["level"] == "error" and any("invalid JSON" in p for p in rec["problems"])
    assert sync_client.get(gw.url + "/api/1").status_code == 200  # old config keeps serving

    invalid = config(route(upstream, external="/v2/{id}") | {"port": 70000, "host": "http://127.0.0.1", "backends": None})
    gw.rewrite_config(invalid)
    wait_until(lambda: reloads(sync_client, gw, "error") >= 2, what="second rejected reload")
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    assert sync_client.get(gw.url + "/v2/1").status_code == 404

    gw.rewrite_config(config(route(upstream, external="/v2/{id}")))
    wait_until(lambda: reloads(sync_client, gw) >= 1, what="good reload")
    assert sync_client.get(gw.url + "/v2/1").status_code == 200
    assert sync_client.get(gw.url + "/api/1").status_code == 404
    assert gw.alive()


def test_sighup_reloads(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reloads(sync_client, gw) >= 1, what="SIGHUP reload")
    rec = gw.wait_for_log(lambda r: r.get("event") == "config_reloaded")
    assert rec["trigger"] == "sighup"
    assert gw.alive() and sync_client.get(gw.url + "/api/1").status_code == 200


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_hundred_reloads_keep_memory_flat(make_upstream, gateway, sync_client):
    ups = make_upstream(3)

    def cfg(i: int) -> dict:
        routes = [route(ups[j % 3], external=f"/r{j}/{{id}}", cors={"allowed_origins": ["https://*.example.com"]})
                  for j in range(20 + i % 5)]
        return config(route(ups[i % 3]), *routes, max_body_size=1000 + i)

    gw = gateway(cfg(0))

    def reload_once(i: int) -> None:
        before = reloads(sync_client, gw)
        gw.rewrite_config(cfg(i))
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: reloads(sync_client, gw) > before, what=f"reload {i}")
        assert sync_client.get(gw.url + "/api/1").status_code == 200

    for i in range(1, 41):  # warm up: allocator arenas, regex and validator caches, lazy imports
        reload_once(i)
    start = _rss_kib(gw.pid)
    marks = []
    for i in range(41, 141):
        reload_once(i)
        if i % 50 == 0:
            marks.append(_rss_kib(gw.pid))
    growth = marks[-1] - start
    print(f"RSS after 40 reloads: {start} KiB, then {marks} (growth {growth} KiB over 100 reloads)")
    # A leaked runtime of this config is ~120 KiB (tracemalloc): 100 of them would be ~12 MiB.
    # Measured: RSS creeps by 1-2 MiB over the first few hundred reloads (allocator arenas,
    # caches) and then stays flat; in-process tracemalloc shows no growth beyond the live config.
    assert growth < 4096, f"RSS grew by {growth} KiB over 100 reloads"
    assert metric_value(sync_client.get(gw.url + "/metrics").text, "kairos_config_reloads_total", result="error") == 0


async def test_sigterm_amid_200_slow_requests(upstream, gateway):
    gw = gateway(config(route(upstream, external="/slow", internal="/slow", methods=["GET"])))
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as c:
        tasks = [asyncio.create_task(c.get(gw.url + "/slow", params={"ms": 1500})) for _ in range(200)]
        await asyncio.to_thread(upstream.wait_for_count, 200, 15.0)
        assert upstream.count == 200
        gw.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if not isinstance(r, httpx.Response)]
    assert errors == []
    assert [r.status_code for r in results] == [200] * 200
    assert await asyncio.to_thread(gw.wait, 15) == 0, gw.output()
    assert gw.wait_for_log(lambda r: r.get("event") == "shutdown")


async def test_ready_turns_503_at_once_and_delay_keeps_serving(upstream, gateway):
    gw = gateway(config(route(upstream), server={"shutdown_delay_s": 1.5}))
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        assert (await c.get(gw.url + "/api/1")).status_code == 200
        gw.proc.send_signal(signal.SIGTERM)
        r = None
        for _ in range(100):
            r = await c.get(gw.url + "/ready")
            if r.status_code == 503:
                break
            await asyncio.sleep(0.01)
        assert r is not None and r.status_code == 503 and r.json()["status"] == "draining"
        # still accepting and proxying during the delay, on new connections too
        async with httpx.AsyncClient(timeout=10, trust_env=False) as fresh:
            assert (await fresh.get(gw.url + "/api/2")).status_code == 200
            assert (await fresh.get(gw.url + "/health")).status_code == 200
    assert await asyncio.to_thread(gw.wait, 15) == 0, gw.output()
    assert gw.wait_for_log(lambda r: r.get("event") == "shutdown_started")


async def test_streams_in_flight_finish_on_sigterm(upstream, gateway):
    gw = gateway(config(route(upstream, external="/stream", internal="/stream", methods=["GET"])))
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        streaming = asyncio.Semaphore(0)

        async def fetch() -> bytes:
            async with c.stream("GET", gw.url + "/stream", params={"chunks": 15, "size": 100, "interval_ms": 100}) as r:
                assert r.status_code == 200
                raw = r.aiter_raw()
                chunks = [await raw.__anext__()]
                streaming.release()  # this response is in flight: its first bytes have arrived
                return b"".join(chunks + [chunk async for chunk in raw])

        tasks = [asyncio.create_task(fetch()) for _ in range(5)]
        for _ in tasks:
            await asyncio.wait_for(streaming.acquire(), 10)
        gw.proc.send_signal(signal.SIGTERM)
        bodies = await asyncio.gather(*tasks)
    assert [len(b) for b in bodies] == [1500] * 5
    assert await asyncio.to_thread(gw.wait, 15) == 0


def test_sigterm_with_two_workers_exits_zero(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)), workers=2)
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    assert gw.stop(signal.SIGTERM) == 0, gw.output()


def test_sighup_is_forwarded_to_every_worker(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)), workers=2)
    wait_until(lambda: len({r["pid"] for r in gw.log_records() if r.get("event") == "startup"}) == 2,
               what="both workers started")
    gw.proc.send_signal(signal.SIGHUP)
    # each worker reloads in place (uvicorn's default would restart them); the counters add up
    wait_until(lambda: reloads(sync_client, gw) >= 2, what="two reloads (one per worker)")
    events = [r for r in gw.log_records() if r.get("event") == "config_reloaded"]
    assert len(events) == 2 and {r["trigger"] for r in events} == {"sighup"}
    assert not [r for r in gw.log_records() if r.get("event") == "shutdown"]  # nobody was restarted
    assert gw.alive() and sync_client.get(gw.url + "/api/1").status_code == 200
    assert gw.stop(signal.SIGTERM) == 0
