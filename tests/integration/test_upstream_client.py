"""The HTTP/1.1 upstream pool against scripted servers on real sockets: framing, reuse, failures."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kairos.upstream.client import UpstreamClient
from kairos.upstream.errors import UpstreamConnectError, UpstreamReset
from tests.conftest import free_port
from tests.h1_upstream import OK, Upstream, answer_forever, client, read_body  # noqa: F401 (client: a fixture)

def Scripted(handler) -> Upstream:
    """An Upstream whose connections run `handler(reader, writer)`."""
    return Upstream(lambda up, reader, writer: handler(reader, writer))


async def body_of(response) -> bytes:
    try:
        return await read_body(response)
    finally:
        response.release()


async def get(client: UpstreamClient, port: int, method: str = "GET", target: str = "/", headers=None, body=None):
    headers = headers if headers is not None else [(b"host", b"x")]
    return await client.request("http", "127.0.0.1", port, method, target, headers, body, 1.0)


async def test_keep_alive_connections_are_reused(client):
    async with Upstream(answer_forever(OK)) as server:
        for _ in range(5):
            assert await body_of(await get(client, server.port)) == b"ok"
        assert server.connections == 1
        assert len(server.requests) == 5


async def test_headers_are_written_as_given_and_nothing_is_added(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with Scripted(handler) as server:
        r = await get(client, server.port, target="/a%2Fb?q=%20", headers=[(b"host", b"up:1"), (b"x-a", b"1"), (b"x-a", b"2")])
        assert r.status == 204
        assert await body_of(r) == b""
    assert server.requests[0] == b"GET /a%2Fb?q=%20 HTTP/1.1\r\nhost: up:1\r\nx-a: 1\r\nx-a: 2\r\n\r\n"


async def test_chunked_response_and_repeated_headers(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )

    async with Scripted(handler) as server:
        r = await get(client, server.port)
        assert [v for k, v in r.raw_headers if k.lower() == b"set-cookie"] == [b"a=1", b"b=2"]
        assert await body_of(r) == b"abcde"


async def test_body_delimited_by_close(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async with Scripted(handler) as server:
        assert await body_of(await get(client, server.port)) == b"until the end"
        assert await body_of(await get(client, server.port)) == b"until the end"
        assert server.connections == 2  # never reused after a close-delimited body


async def test_head_response_has_no_body_and_keeps_the_connection(client):
    async with Upstream(answer_forever(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")) as server:
        r = await get(client, server.port, method="HEAD")
        assert r.status == 200
        assert await body_of(r) == b""
        r = await get(client, server.port, method="HEAD")
        assert await body_of(r) == b""
        assert server.connections == 1  # HEAD no longer forces a new connection (issue 10)


async def test_interim_100_continue_is_skipped(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")

    async with Scripted(handler) as server:
        r = await get(client, server.port, method="POST", headers=[(b"host", b"x"), (b"content-length", b"3")], body=b"abc")
        assert r.status == 201
        assert await body_of(r) == b"done"


async def test_bytes_body_without_length_gets_one_and_streams_get_chunked(client):
    received: list[bytes] = []

    async def handler(reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            server.requests.append(head)
            if b"chunked" in head:
                data = await reader.readuntil(b"0\r\n\r\n")
            else:
                data = await reader.readexactly(5)
            received.append(data)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def stream():
        yield b"ab"
        yield b"cde"

    async with Scripted(handler) as server:
        await body_of(await get(client, server.port, method="POST", body=b"hello"))
        await body_of(await get(client, server.port, method="POST", body=stream()))
    assert b"content-length: 5" in server.requests[0]
    assert received[0] == b"hello"
    assert b"transfer-encoding: chunked" in server.requests[1]
    assert received[1] == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"


async def test_refused_connection_is_a_connect_error(client):
    port = free_port()
    with pytest.raises(UpstreamConnectError) as info:
        await get(client, port)
    assert info.value.never_sent


async def test_close_before_answer_is_a_reset(client):
    async def handler(reader, writer):
        await server.read_request(reader)

    async with Scripted(handler) as server:
        with pytest.raises(UpstreamReset) as info:
            await get(client, server.port)
        assert not info.value.never_sent


async def test_body_cut_short_raises_reset(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async with Scripted(handler) as server:
        r = await get(client, server.port)
        assert await r.read() == b"only this"
        with pytest.raises(UpstreamReset):
            await r.read()
        r.release()


async def test_malformed_response_is_a_reset(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with Scripted(handler) as server:
        with pytest.raises(UpstreamReset):
            await get(client, server.port)


async def test_early_answer_stops_the_upload_and_drops_the_connection(client):
    async def handler(reader, writer):
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    release_body = asyncio.Event()

    async def endless():
        yield b"x" * 1000
        await release_body.wait()
        yield b"y" * 1000

    async with Scripted(handler) as server:
        r = await get(client, server.port, method="POST", body=endless())
        assert r.status == 413
        await body_of(r)
        release_body.set()
        r2 = await get(client, server.port)
        assert r2.status == 413
        await body_of(r2)
        assert server.connections == 2  # the interrupted connection was not reused


async def test_stale_idle_connection_is_not_used(client):
    async def handler(reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # then close the idle keep-alive connection, as an upstream's idle timeout would

    async with Scripted(handler) as server:
        assert await body_of(await get(client, server.port)) == b"ok"
        await asyncio.sleep(0.2)  # let the close reach the pool
        assert await body_of(await get(client, server.port)) == b"ok"
        assert server.connections == 2
        assert len(server.requests) == 2  # one attempt each: no hidden retry


async def test_httpx_api_over_the_pool(client, upstream):
    r = await client.http.get(upstream.url + "/echo/a%20b?x=1", headers={"x-probe": "1"})
    assert r.status_code == 200
    assert r.json()["raw_path"] == "/echo/a%20b?x=1"
    assert upstream.last.header("x-probe") == "1"
    r = await client.http.post(upstream.url + "/upload", content=b"z" * 1234)
    assert r.json()["body_len"] == 1234


async def test_httpx_api_maps_failures(client):
    with pytest.raises(httpx.ConnectError):
        await client.http.get(f"http://127.0.0.1:{free_port()}/")
