"""HTTP/1.1 conformance of the upstream pool against upstreams scripted byte for byte.

Cases follow h11's and httpcore's own suites (one response per exchange, framing
errors, 1xx, HEAD/204/304 bodies, oversized heads, stale keep-alive connections,
pool limits), each against a plain asyncio server on a real socket. The property
tests (an in-process transport, split at exact read boundaries) are in
tests/unit/test_h1_properties.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tracemalloc

import httpx
import pytest

from kairos.upstream.client import UpstreamClient
from kairos.upstream.errors import (
    InvalidUpstreamRequest,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
)
from kairos.upstream.pool import PoolLimits
from tests.h1_upstream import OK, Upstream, answer_forever, client, read_body, replies  # noqa: F401 (client: a fixture)


async def fetch(client: UpstreamClient, port: int, method: str = "GET", **kw):
    """One exchange, its whole body read: (status, headers, body)."""
    headers = kw.pop("headers", [(b"host", b"up")])
    r = await client.request("http", "127.0.0.1", port, method, kw.pop("target", "/"), headers, kw.pop("body", None), 2.0, **kw)
    try:
        return r.status, r.raw_headers, await read_body(r)
    finally:
        r.release()


def idle_count(client: UpstreamClient, port: int) -> int:
    assert client.pool is not None
    return client.pool.stats(f"http://127.0.0.1:{port}")[2]


# --------------------------------------------------------------------------- one response per exchange


async def test_second_response_in_one_segment_never_reaches_the_next_request(client):
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"
    async with Upstream(answer_forever(OK + smuggled)) as up:
        assert await fetch(client, up.port) == (200, [(b"Content-Length", b"2")], b"ok")
        status, _, body = await fetch(client, up.port)
        assert (status, body) == (200, b"ok")  # from a new connection, not "evil!"
        assert up.connections == 2


async def test_trailing_garbage_closes_the_connection(client):
    async with Upstream(answer_forever(OK + b"garbage")) as up:
        assert (await fetch(client, up.port))[2] == b"ok"
        assert (await fetch(client, up.port))[2] == b"ok"
        assert up.connections == 2


async def test_bytes_while_idle_discard_the_connection(client):
    async def script(up, reader, writer):
        await up.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(smuggled)  # arrives while the connection waits in the pool
        await writer.drain()
        await reader.read()

    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
    async with Upstream(script) as up:
        assert (await fetch(client, up.port))[2] == b"ok"
        await asyncio.wait_for(up.closed.wait(), 2)  # the pool closed it on its own
        assert idle_count(client, up.port) == 0
        up.script = replies(OK)
        assert (await fetch(client, up.port))[2] == b"ok"
        assert up.connections == 2


@pytest.mark.parametrize(
    "method,answer",
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\nbody"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nbody"),
    ],
)
async def test_a_body_where_none_may_be_is_never_delivered(client, method, answer):
    async with Upstream(answer_forever(answer)) as up:
        status, _, body = await fetch(client, up.port, method)
        assert body == b""
        status2, _, body2 = await fetch(client, up.port, method)
        assert (status2, body2) == (status, b"")
        assert up.connections == 2  # the first connection carried surplus bytes


async def test_head_and_304_keep_the_connection(client):
    async with Upstream(answer_forever(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")) as up:
        for _ in range(3):
            status, headers, body = await fetch(client, up.port, "HEAD")
            assert (status, body) == (200, b"")
        assert up.connections == 1
    async with Upstream(answer_forever(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")) as up:
        for _ in range(3):  # no length at all: still no body after HEAD
            assert (await fetch(client, up.port, "HEAD"))[0] == 200
        assert up.connections == 1
    async with Upstream(answer_forever(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")) as up:
        for _ in range(3):
            assert (await fetch(client, up.port))[0] == 304
        assert up.connections == 1


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 999 Nope\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 099 Nope\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
    ],
)
async def test_invalid_framing_before_the_head_is_a_protocol_error(client, answer):
    async with Upstream(replies(answer)) as up:
        with pytest.raises(UpstreamProtocolError):
            await fetch(client, up.port)
        await asyncio.wait_for(up.closed.wait(), 2)  # and the connection is closed
        assert idle_count(client, up.port) == 0


@pytest.mark.parametrize("bad_chunk", [b"zz", b"-2", b"0x2", b"2 ", b"ffffffffffffffffff"])
async def test_bad_chunk_after_the_head_aborts_the_body(client, bad_chunk):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n" + bad_chunk + b"\r\nxx\r\n0\r\n\r\n"
    async with Upstream(replies(answer)) as up:
        r = await client.request("http", "127.0.0.1", up.port, "GET", "/", [(b"host", b"up")])
        assert r.status == 200
        with pytest.raises(UpstreamError):
            while await r.read():
                pass
        r.release()
        assert idle_count(client, up.port) == 0


async def test_interim_responses_are_skipped(client):
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
    )
    async with Upstream(answer_forever(answer)) as up:
        status, headers, body = await fetch(client, up.port, "POST", body=b"abc")
        assert (status, headers, body) == (201, [(b"Content-Length", b"4")], b"done")
        assert (await fetch(client, up.port, "POST", body=b"abc"))[0] == 201
        assert up.connections == 1


async def test_no_exception_escapes_the_protocol_callbacks(client, caplog):
    answers = [
        b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"\x00\xff" * 100,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\x00\x00",
    ]
    caplog.set_level(logging.DEBUG, logger="asyncio")
    for answer in answers:
        async with Upstream(replies(answer)) as up:
            try:
                await fetch(client, up.port)
            except UpstreamError:
                pass
            await asyncio.wait_for(up.closed.wait(), 2)
    await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- bounded heads


async def test_too_many_response_headers_is_a_502(client):
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    async with Upstream(replies(b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n")) as up:
        with pytest.raises(UpstreamProtocolError, match="more than 100 headers"):
            await fetch(client, up.port)
    exactly = b"".join(b"X-%d: v\r\n" % i for i in range(99))
    async with Upstream(replies(b"HTTP/1.1 200 OK\r\n" + exactly + b"Content-Length: 0\r\n\r\n")) as up:
        assert (await fetch(client, up.port))[0] == 200


async def test_response_head_over_the_byte_limit_is_a_502():
    c = UpstreamClient(max_header_bytes=1024, max_headers=10)
    await c.start()
    try:
        async with Upstream(replies(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n")) as up:
            with pytest.raises(UpstreamProtocolError, match="larger than 1024"):
                await fetch(c, up.port)
        async with Upstream(replies(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 900 + b"\r\nContent-Length: 0\r\n\r\n")) as up:
            assert (await fetch(c, up.port))[0] == 200
    finally:
        await c.aclose()


async def test_a_20_mb_header_line_does_not_grow_memory(client):
    async def script(up, reader, writer):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: ")
        chunk = b"a" * 65536
        for _ in range(320):  # 20 MB, never terminated
            writer.write(chunk)
            await writer.drain()

    tracemalloc.start()
    try:
        async with Upstream(script) as up:
            with pytest.raises(UpstreamProtocolError, match="larger than"):
                await fetch(client, up.port)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


# --------------------------------------------------------------------------- clean request bytes


@pytest.mark.parametrize(
    "method,target,headers",
    [
        ("GET", "/", [(b"x-a", b"1\r\nx-injected: 1")]),
        ("GET", "/", [(b"x-a", b"1\nx-injected: 1")]),
        ("GET", "/", [(b"x-a", b"1\rx")]),
        ("GET", "/", [(b"x-a", b"a\x00b")]),
        ("GET", "/", [(b"x-a", b"a\x7fb")]),
        ("GET", "/", [(b"x a", b"1")]),
        ("GET", "/", [(b"x-a:", b"1")]),
        ("GET", "/", [(b"", b"1")]),
        ("GET", "/", [(b"x-a\r\nx-b", b"1")]),
        ("GET", "/a b", []),
        ("GET", "/a\r\nX: y", []),
        ("GET", "/\x00", []),
        ("GET", "/caf\xe9", []),
        ("GET", "", []),
        ("GE T", "/", []),
        ("GET\r\n", "/", []),
    ],
)
async def test_unsafe_request_bytes_are_refused_before_a_connection_is_taken(client, method, target, headers):
    async with Upstream(replies(OK)) as up:
        with pytest.raises(InvalidUpstreamRequest) as info:
            await client.request("http", "127.0.0.1", up.port, method, target, [(b"host", b"up"), *headers])
        assert info.value.never_sent
        assert up.connections == 0


async def test_the_httpx_api_cannot_write_unsafe_bytes_either(client):
    async with Upstream(replies(OK)) as up:
        with pytest.raises(httpx.LocalProtocolError):
            await client.http.get(f"http://127.0.0.1:{up.port}/", headers={"x-a": "1\r\nx-injected: 1"})
        assert up.connections == 0


async def test_tab_obs_text_and_latin1_values_are_written(client):
    async with Upstream(replies(OK)) as up:
        await fetch(client, up.port, headers=[(b"host", b"up"), (b"x-a", b"a\tb \xe9")])
    assert up.requests[0] == b"GET / HTTP/1.1\r\nhost: up\r\nx-a: a\tb \xe9\r\n\r\n"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_failures_while_building_never_leak_a_connection(client):
    async with Upstream(answer_forever(OK)) as up:
        await fetch(client, up.port)  # one idle connection
        before = open_fds()
        for i in range(10_000):
            with pytest.raises(InvalidUpstreamRequest):
                await client.request("http", "127.0.0.1", up.port, "GET", "/", [(b"x", b"%d\n" % i)])
        assert open_fds() == before
        assert (await fetch(client, up.port))[2] == b"ok"
        assert up.connections == 1


# --------------------------------------------------------------------------- hand-over safety


async def test_connection_closed_while_idle_is_never_written_to(client):
    # The upstream closes its idle keep-alive connection (uvicorn does after 5 s) and the
    # FIN is in the kernel before the loop has read it: the request must go elsewhere.
    import socket
    import time

    writers = []

    async def script(up, reader, writer):
        writers.append(writer)
        while True:
            await up.read_request(reader)
            writer.write(OK)
            await writer.drain()

    async with Upstream(script) as up:
        assert (await fetch(client, up.port))[2] == b"ok"
        writers[0].get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        time.sleep(0.05)  # blocks the loop: the FIN arrives, nobody reads it yet
        status, _, body = await fetch(client, up.port, "POST", body=b"once")
        assert body == b"ok"
        assert up.connections == 2
        assert len(up.requests) == 2  # the POST went out once, on the new connection


# --------------------------------------------------------------------------- limits


async def test_beyond_max_pending_is_refused_at_once(client):
    release = asyncio.Event()

    async def script(up, reader, writer):
        await up.read_request(reader)
        await release.wait()
        writer.write(OK)
        await writer.drain()
        await reader.read()

    limits = PoolLimits(max_connections=1, max_pending=2)
    async with Upstream(script) as up:
        first = asyncio.ensure_future(fetch(client, up.port, limits=limits))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(fetch(client, up.port, limits=limits)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert client.pool.stats(f"http://127.0.0.1:{up.port}")[:2] == (1, 2)
        with pytest.raises(UpstreamOverloaded) as info:
            await fetch(client, up.port, limits=limits)
        assert info.value.never_sent
        release.set()
        await first
        for q in queued:
            q.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        assert up.connections == 1


async def test_pool_gauges_in_metrics(client):
    from prometheus_client import REGISTRY

    release = asyncio.Event()
    async with Upstream(answer_forever(OK, after=release)) as up:
        label = f"http://127.0.0.1:{up.port}"
        limits = PoolLimits(max_connections=1)
        tasks = [asyncio.ensure_future(fetch(client, up.port, limits=limits)) for _ in range(3)]
        await asyncio.sleep(0.05)
        in_use = REGISTRY.get_sample_value("kairos_upstream_connections_in_use", {"backend": label})
        pending = REGISTRY.get_sample_value("kairos_upstream_requests_pending", {"backend": label})
        assert (in_use, pending) == (1, 2)
        release.set()
        await asyncio.gather(*tasks)
        assert REGISTRY.get_sample_value("kairos_upstream_connections_in_use", {"backend": label}) == 0


async def test_max_requests_per_connection_and_max_idle(client):
    async with Upstream(answer_forever(OK)) as up:
        limits = PoolLimits(max_requests_per_connection=2)
        for _ in range(5):
            await fetch(client, up.port, limits=limits)
        assert up.connections == 3
    async with Upstream(answer_forever(OK)) as up:
        limits = PoolLimits(max_idle=1)
        await asyncio.gather(*(fetch(client, up.port, limits=limits) for _ in range(4)))
        assert idle_count(client, up.port) == 1


async def test_idle_connections_expire_on_a_timer_without_traffic(client):
    async with Upstream(answer_forever(OK)) as up:
        await fetch(client, up.port, limits=PoolLimits(idle_timeout_s=0.1))
        await asyncio.wait_for(up.closed.wait(), 2)  # closed by the pool, no request needed
        assert idle_count(client, up.port) == 0


async def test_retain_closes_idle_connections_of_removed_origins(client):
    async with Upstream(answer_forever(OK)) as up:
        await fetch(client, up.port)
        client.retain({("http", "127.0.0.1", up.port)})
        assert idle_count(client, up.port) == 1
        client.retain(set())
        await asyncio.wait_for(up.closed.wait(), 2)


# --------------------------------------------------------------------------- httpx API


async def test_transport_streams_both_ways(client):
    received = []

    async def script(up, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        up.requests.append(head)
        received.append(await reader.readuntil(b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def body():
        yield b"hello "
        yield b"world"

    async with Upstream(script) as up:
        async with client.http.stream("POST", f"http://127.0.0.1:{up.port}/u", content=body()) as r:
            chunks = [c async for c in r.aiter_raw()]
        assert chunks == [b"abc", b"de"]
    assert b"transfer-encoding: chunked" in up.requests[0]
    assert received[0] == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"


async def test_transport_maps_timeouts(client):
    async def silent(up, reader, writer):
        await up.read_request(reader)
        await reader.read()

    async def slow_body(up, reader, writer):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await writer.drain()
        await reader.read()

    async with Upstream(silent) as up:
        with pytest.raises(httpx.ReadTimeout):
            await client.http.get(f"http://127.0.0.1:{up.port}/", timeout=0.1)
    async with Upstream(slow_body) as up:
        with pytest.raises(httpx.ReadTimeout):
            await client.http.get(f"http://127.0.0.1:{up.port}/", timeout=0.1)


async def test_transport_maps_pool_timeout():
    held = asyncio.Event()
    c = UpstreamClient(limits=PoolLimits(max_connections=1))
    await c.start()
    try:
        async with Upstream(answer_forever(OK, after=held)) as up:
            first = asyncio.ensure_future(c.http.get(f"http://127.0.0.1:{up.port}/"))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await c.http.get(f"http://127.0.0.1:{up.port}/", timeout=httpx.Timeout(5, pool=0.05))
            assert c.pool.stats(f"http://127.0.0.1:{up.port}")[1] == 0  # the waiter left the queue
            held.set()
            assert (await first).status_code == 200
    finally:
        await c.aclose()


async def test_transport_maps_connect_timeout(client, monkeypatch):
    async def never_connects(*args, **kwargs):
        await asyncio.sleep(10)

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never_connects)
    with pytest.raises(httpx.ConnectTimeout):
        await client.http.get("http://127.0.0.1:9/", timeout=httpx.Timeout(5, connect=0.05))


async def test_transport_protocol_errors_and_overload(client):
    async with Upstream(replies(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nx")) as up:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.http.get(f"http://127.0.0.1:{up.port}/")


# --------------------------------------------------------------------------- through the gateway (in process)


def gateway_app(port: int, **top):
    import kairos

    return kairos.create_app({
        "routers": [{"external_path": "/api/{rest:path}", "internal_path": "/{rest}", "methods": ["GET", "POST"],
                     "host": "http://127.0.0.1", "port": port}],
        **top,
    })


async def test_gateway_answers_503_upstream_overloaded_at_once():
    release = asyncio.Event()
    async with Upstream(answer_forever(OK, after=release)) as up:
        app = gateway_app(up.port, connection_pool={"max_connections": 1, "max_pending": 0})
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                first = asyncio.ensure_future(c.get("/api/a"))
                await asyncio.sleep(0.1)
                r = await c.get("/api/b")
                assert (r.status_code, r.json()["type"]) == (503, "upstream_overloaded")
                release.set()
                assert (await first).status_code == 200
                m = await c.get("/metrics")
                assert f'kairos_upstream_connections_in_use{{backend="http://127.0.0.1:{up.port}"}} 0.0' in m.text
                assert f'kairos_upstream_requests_pending{{backend="http://127.0.0.1:{up.port}"}} 0.0' in m.text
        finally:
            await app.state.gateway.aclose()


async def test_gateway_502_for_invalid_framing_and_abort_after_the_head():
    bad_te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    async with Upstream(replies(bad_te)) as up:
        app = gateway_app(up.port)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                r = await c.get("/api/a")
                assert (r.status_code, r.json()["type"]) == (502, "upstream")
                assert "invalid response" in r.json()["error"]
        finally:
            await app.state.gateway.aclose()
    bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"
    async with Upstream(replies(bad_chunk)) as up:
        app = gateway_app(up.port)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                with pytest.raises(UpstreamError):  # the client's response is aborted, never ended cleanly
                    await c.get("/api/a")
        finally:
            await app.state.gateway.aclose()


async def test_reload_closes_idle_connections_of_removed_backends():
    from kairos.config.loader import parse_config

    async with Upstream(answer_forever(OK)) as up, Upstream(answer_forever(OK)) as other:
        app = gateway_app(up.port)
        gateway = app.state.gateway
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                assert (await c.get("/api/a")).status_code == 200
                gateway.swap(parse_config({"routers": [{
                    "external_path": "/api/{rest:path}", "internal_path": "/{rest}", "methods": ["GET"],
                    "host": "http://127.0.0.1", "port": other.port}]}, use_env=False))
                await asyncio.wait_for(up.closed.wait(), 2)  # closed by the reload, not by a timer
                assert (await c.get("/api/a")).status_code == 200
                assert other.connections == 1
        finally:
            await gateway.aclose()


async def test_uvicorn_upstream_closing_idle_connections_is_harmless(client):
    # uvicorn closes idle keep-alive connections after 5 s (here 0.2 s); the pool keeps them
    # for 60 s by default: each close is noticed when it happens and never costs a request.
    import uvicorn

    from tests.conftest import free_port

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, timeout_keep_alive=0.2,
                                           log_level="warning", lifespan="off"))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        for _ in range(3):
            assert (await fetch(client, port, "POST", body=b"x"))[2] == b"ok"
            await asyncio.sleep(0.4)  # past uvicorn's keep-alive timeout
            assert idle_count(client, port) == 0  # dropped when uvicorn closed it
    finally:
        server.should_exit = True
        await task
