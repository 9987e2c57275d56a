"""Tests of the test harness itself: the Upstream server over a real socket."""

from __future__ import annotations

import gzip
import time

import httpx
import pytest

from upstream import GZIP_PLAIN, Upstream


def test_echo_records_request_with_duplicate_headers(upstream, sync_client):
    r = sync_client.post(
        upstream.url + "/echo/x?a=1&a=2",
        headers=[("X-Dup", "one"), ("X-Dup", "two")],
        content=b"hello",
    )
    assert r.status_code == 200
    assert r.headers["x-upstream"] == "upstream"
    body = r.json()
    assert body["method"] == "POST"
    assert body["path"] == "/echo/x"
    assert body["raw_path"] == "/echo/x?a=1&a=2"
    assert body["query"] == "a=1&a=2"
    assert body["body_len"] == 5
    assert ["X-Dup", "one"] in body["headers"] and ["X-Dup", "two"] in body["headers"]

    assert upstream.count == 1
    rec = upstream.requests[0]
    assert rec.name == "upstream" and rec.method == "POST"
    assert rec.raw_path == "/echo/x?a=1&a=2"
    assert rec.header_all("x-dup") == ["one", "two"]
    assert rec.body_len == 5 and rec.completed
    upstream.reset()
    assert upstream.count == 0


def test_unknown_path_echoes_and_set_status(upstream, sync_client):
    upstream.set_status(418)
    r = sync_client.get(upstream.url + "/users/42")
    assert r.status_code == 418
    assert r.json()["path"] == "/users/42"


def test_fail_next_then_recovers(upstream, sync_client):
    upstream.fail_next(2, status=502)
    codes = [sync_client.get(upstream.url + "/echo").status_code for _ in range(3)]
    assert codes == [502, 502, 200]
    assert upstream.count == 3


def test_close_next_gives_transport_error(upstream):
    upstream.close_next(1)
    with httpx.Client(timeout=5, trust_env=False) as c:
        with pytest.raises(httpx.TransportError):
            c.get(upstream.url + "/echo")
        assert c.get(upstream.url + "/echo").status_code == 200


@pytest.mark.parametrize("path", ["/reset", "/close"])
def test_reset_and_close_give_transport_error(upstream, sync_client, path):
    with pytest.raises(httpx.TransportError):
        sync_client.get(upstream.url + path)


async def test_stream_chunks_arrive_separately(upstream, client):
    arrivals = []
    async with client.stream("GET", upstream.url + "/stream?chunks=3&size=10&interval_ms=100") as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        async for chunk in r.aiter_raw():
            arrivals.append((time.monotonic(), len(chunk)))
    assert sum(n for _, n in arrivals) == 30
    assert len(arrivals) == 3
    assert arrivals[-1][0] - arrivals[0][0] >= 0.15


async def test_sse_events(upstream, client):
    r = await client.get(upstream.url + "/sse?events=3&interval_ms=10")
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_bytes_size(upstream, sync_client):
    n = 3 * 65536 + 123
    with sync_client.stream("GET", upstream.url + f"/bytes?n={n}") as r:
        assert int(r.headers["content-length"]) == n
        assert sum(len(c) for c in r.iter_raw()) == n


def test_upload_counts_streamed_body(upstream, sync_client):
    def gen():
        for _ in range(10):
            yield b"x" * 10000

    r = sync_client.post(upstream.url + "/upload", content=gen())
    assert r.json()["body_len"] == 100000
    assert upstream.last.body_len == 100000


def test_cookie_sends_two_set_cookie_headers(upstream, sync_client):
    r = sync_client.get(upstream.url + "/cookie?name=a&value=1", headers={"Cookie": "z=9"})
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert r.json()["cookie"] == "z=9"


def test_gzip_is_precompressed(upstream, sync_client):
    with sync_client.stream("GET", upstream.url + "/gzip") as r:
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == GZIP_PLAIN


def test_status_slow_health_and_delay(upstream, sync_client):
    assert sync_client.get(upstream.url + "/status/404").status_code == 404
    assert sync_client.get(upstream.url + "/status/204").status_code == 204
    t = time.monotonic()
    assert sync_client.get(upstream.url + "/slow?ms=100").status_code == 200
    assert time.monotonic() - t >= 0.09
    assert sync_client.get(upstream.url + "/healthz").status_code == 200
    upstream.healthy = False
    upstream.fail_next(5)
    assert sync_client.get(upstream.url + "/healthz").status_code == 503
    assert upstream.health_count == 2
    count = upstream.count
    upstream.reset()
    assert count == 3  # /healthz is not recorded
    upstream.set_delay(100)
    t = time.monotonic()
    sync_client.get(upstream.url + "/echo")
    assert time.monotonic() - t >= 0.09


def test_hang_does_not_block_stop():
    u = Upstream("h").start()
    with httpx.Client(timeout=0.2, trust_env=False) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get(u.url + "/hang")
    t = time.monotonic()
    u.stop()
    assert time.monotonic() - t < 2
    assert not u.running


def test_restart_on_same_port_and_factory(make_upstream, sync_client):
    a, b = make_upstream(2)
    assert a.name != b.name and a.port != b.port
    port = a.port
    a.stop()
    with pytest.raises(httpx.ConnectError):
        sync_client.get(a.url + "/echo")
    a.start()
    assert a.port == port
    assert sync_client.get(a.url + "/echo").json()["upstream"] == a.name
    assert a.backend(weight=3) == {"host": "http://127.0.0.1", "port": port, "weight": 3}
