"""The proxy path against a real gateway process and real upstream servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket

import httpx
import pytest

from tests.upstream import GZIP_PLAIN


def config_for(up, **top):
    return {
        "version": 1,
        "routers": [
            {
                "external_path": "/api/users/{id}",
                "internal_path": "/echo/users/{id}",
                "methods": ["GET", "POST"],
                "host": up.host,
                "port": up.port,
            },
            {
                "external_path": "/t/{rest:path}",
                "internal_path": "/{rest}",
                "methods": ["GET", "POST", "PUT", "DELETE"],
                "backends": [up.backend()],
            },
            {
                "external_path": "/kept/{rest:path}",
                "internal_path": "/{rest}",
                "methods": ["GET"],
                "backends": [up.backend()],
                "preserve_host": True,
            },
        ],
        **top,
    }


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send bytes as written (no client library adding headers); parse a Content-Length response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        length = int(dict(headers).get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def echo(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def header_values(headers: list, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


@pytest.fixture
def gw(gateway, upstream):
    return gateway(config_for(upstream))


# --- routing and paths ---------------------------------------------------------------------------


def test_path_params_query_and_encoding_are_forwarded_byte_for_byte(gw, upstream, sync_client):
    r = sync_client.get(gw.url + "/api/users/a%20b%C3%A9?x=1&y=%2F&y=2&empty=")
    data = echo(r)
    assert data["raw_path"] == "/echo/users/a%20b%C3%A9?x=1&y=%2F&y=2&empty="
    assert r.headers["x-upstream"] == upstream.name


def test_rest_capture_spans_segments(gw, upstream, sync_client):
    data = echo(sync_client.get(gw.url + "/t/echo/deep/er/path?q"))
    assert data["raw_path"] == "/echo/deep/er/path?q"


@pytest.mark.parametrize(
    "path",
    ["/api/users/a%2Fb", "/api/users/a%2fb", "/api/users/a%5Cb", "/api/users/a%5cb", "/api/users/%2e%2e", "/t/echo/%2E%2E/x", "/t/echo/%2e/x"],
)
def test_captures_that_could_escape_the_template_are_rejected(gw, upstream, path):
    status, _, body = raw_request(gw.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 400
    assert json.loads(body)["type"] == "bad_request"
    assert upstream.count == 0


def test_unknown_route_is_404_json(gw, sync_client):
    r = sync_client.get(gw.url + "/nowhere")
    assert r.status_code == 404
    body = r.json()
    assert set(body) == {"error", "type", "request_id", "timestamp"}
    assert body["type"] == "route_not_found"
    assert r.headers["content-type"] == "application/json"
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["timestamp"].endswith("Z")


def test_wrong_method_is_405_with_allow(gw, sync_client):
    r = sync_client.delete(gw.url + "/api/users/1")
    assert r.status_code == 405
    assert r.json()["type"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, HEAD, POST"


def test_head_is_served_where_get_is(gw, upstream, sync_client):
    r = sync_client.head(gw.url + "/api/users/7")
    assert r.status_code == 200
    assert r.content == b""
    assert upstream.last.method == "HEAD"


# --- headers -------------------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_removed(gw, upstream):
    status, _, body = raw_request(
        gw.port,
        b"GET /api/users/1 HTTP/1.1\r\nHost: gw.example\r\nConnection: keep-alive, X-Private\r\n"
        b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic abc\r\n"
        b"Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n",
    )
    assert status == 200
    rec = upstream.last
    names = {k.lower() for k, _ in rec.headers}
    for gone in ("x-private", "keep-alive", "te", "proxy-authorization", "upgrade", "proxy-connection"):
        assert gone not in names
    assert rec.header("x-kept") == "yes"


def test_forwarding_headers_and_backend_host(gw, upstream):
    status, _, _ = raw_request(
        gw.port,
        b"GET /api/users/1 HTTP/1.1\r\nHost: gw.example:8443\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    rec = upstream.last
    assert rec.header("host") == f"127.0.0.1:{upstream.port}"
    assert rec.header("x-forwarded-for") == "203.0.113.9, 127.0.0.1"
    assert rec.header("x-forwarded-proto") == "http"
    assert rec.header("x-forwarded-host") == "gw.example:8443"


def test_preserve_host_sends_the_clients_host(gw, upstream):
    raw_request(gw.port, b"GET /kept/echo HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
    assert upstream.last.header("host") == "api.example.com"


def test_no_client_library_defaults_are_added(gw, upstream):
    status, headers, _ = raw_request(gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    sent = {k.lower() for k, _ in upstream.last.headers}
    assert "user-agent" not in sent
    assert "accept-encoding" not in sent
    assert "accept" not in sent
    assert "content-type" not in sent
    assert "cookie" not in sent


def test_client_headers_pass_unchanged(gw, upstream):
    raw_request(
        gw.port,
        b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\nAccept-Encoding: br\r\nX-Dup: 1\r\nX-Dup: 2\r\nConnection: close\r\n\r\n",
    )
    rec = upstream.last
    assert rec.header("user-agent") == "curl/8"
    assert rec.header("accept-encoding") == "br"
    assert rec.header_all("x-dup") == ["1", "2"] or rec.header_all("x-dup") == ["1, 2"]


def test_no_duplicate_server_or_date_headers(gw):
    status, headers, _ = raw_request(gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert len(header_values(headers, "server")) <= 1
    assert len(header_values(headers, "date")) == 1  # the upstream's own


def test_repeated_set_cookie_headers_stay_separate(gw):
    status, headers, _ = raw_request(gw.port, b"GET /t/cookie?name=a&value=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert header_values(headers, "set-cookie") == ["a=1", "b=2"]


def test_no_cookie_leaks_from_one_client_to_another(gw, upstream):
    # Client A receives Set-Cookie through the gateway...
    raw_request(gw.port, b"GET /t/cookie?name=session&value=alice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    # ...client B (no cookies of its own) must not have it replayed upstream.
    status, _, body = raw_request(gw.port, b"GET /t/cookie HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert json.loads(body)["cookies"] == []
    assert upstream.last.header("cookie") is None


def test_content_encoding_passes_through_untouched(gw):
    status, headers, body = raw_request(
        gw.port, b"GET /t/gzip HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert dict(headers)["content-encoding"] == "gzip"
    assert gzip.decompress(body) == GZIP_PLAIN


def test_upstream_error_responses_pass_through_unchanged(gw, sync_client):
    r = sync_client.get(gw.url + "/t/status/503")
    assert r.status_code == 503
    assert r.json() == {"status": 503, "upstream": "upstream"}


# --- request ids ---------------------------------------------------------------------------------


def test_sane_request_id_is_kept_and_sent_upstream(gw, upstream, sync_client):
    r = sync_client.get(gw.url + "/api/users/1", headers={"X-Request-ID": "abc.DEF-123_x"})
    assert r.headers["x-request-id"] == "abc.DEF-123_x"
    assert upstream.last.header("x-request-id") == "abc.DEF-123_x"


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", "ünï"])
def test_insane_request_id_is_replaced(gw, upstream, bad):
    status, headers, _ = raw_request(
        gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + bad.encode() + b"\r\nConnection: close\r\n\r\n"
    )
    rid = dict(headers)["x-request-id"]
    assert rid != bad and len(rid) == 32
    assert upstream.last.header("x-request-id") == rid


def test_generated_request_id_in_error_bodies(gw, sync_client):
    r = sync_client.get(gw.url + "/nope")
    assert len(r.headers["x-request-id"]) == 32
    assert r.json()["request_id"] == r.headers["x-request-id"]


# --- failures ------------------------------------------------------------------------------------


def test_refused_connection_is_502_upstream(gateway, make_upstream, sync_client):
    up = make_upstream()
    gw = gateway(config_for(up))
    up.stop()
    r = sync_client.get(gw.url + "/api/users/1")
    assert r.status_code == 502
    assert r.json()["type"] == "upstream"
    # The backend's address is for the operator's log, not for the client.
    assert str(up.port) not in r.text and "127.0.0.1" not in r.text
    event = gw.wait_for_log(lambda rec: rec.get("event") == "upstream_error")
    assert event["backend"] == f"http://127.0.0.1:{up.port}"
    assert event["request_id"] == r.headers["x-request-id"] and event["kind"] == "connect"


def test_reset_connection_is_502_upstream(gw, sync_client):
    r = sync_client.get(gw.url + "/t/reset")
    assert r.status_code == 502
    assert r.json()["type"] == "upstream"


def test_timeout_is_504(gateway, upstream, sync_client):
    gw = gateway(config_for(upstream, timeout_ms=300))
    r = sync_client.get(gw.url + "/t/hang")
    assert r.status_code == 504
    body = r.json()
    assert body["type"] == "timeout"
    assert "Traceback" not in r.text


def test_a_route_without_retry_reaches_the_upstream_exactly_once(gw, upstream, sync_client):
    # Warm a keep-alive connection, then have the upstream drop the next request on it:
    # aiohttp would silently resend an idempotent request; the gateway must not.
    assert sync_client.get(gw.url + "/api/users/1").status_code == 200
    upstream.reset()
    upstream.close_next(1)
    r = sync_client.get(gw.url + "/api/users/2")
    assert r.status_code == 502
    assert upstream.count == 1


def test_post_is_sent_once_when_the_upstream_fails(gw, upstream, sync_client):
    upstream.fail_next(1, status=503)
    r = sync_client.post(gw.url + "/api/users/1", content=b"x" * 1000)
    assert r.status_code == 503
    assert upstream.count == 1


# --- streaming -----------------------------------------------------------------------------------


async def test_chunked_response_arrives_chunk_by_chunk(gw, upstream, client):
    # The upstream sends one chunk, then waits a long time before the rest: the first
    # chunk must reach the client while the upstream is still producing.
    async with client.stream("GET", gw.url + "/t/stream?chunks=3&size=10&interval_ms=3000") as r:
        assert r.status_code == 200
        it = r.aiter_raw()
        first = await asyncio.wait_for(it.__anext__(), timeout=2.5)
        assert first.startswith(b"a" * 10)
        assert upstream.requests[-1].completed is False
        await r.aclose()


async def test_server_sent_events_stream(gw, upstream, client):
    async with client.stream("GET", gw.url + "/t/sse?events=3&interval_ms=3000") as r:
        assert r.headers["content-type"] == "text/event-stream"
        first = await asyncio.wait_for(r.aiter_raw().__anext__(), timeout=2.5)
        assert first == b"data: 0\n\n"
        assert upstream.requests[-1].completed is False


def test_body_sizes_roundtrip(gw, sync_client):
    r = sync_client.post(gw.url + "/t/upload", content=b"z" * 3_000_000)
    assert r.json()["body_len"] == 3_000_000
    r = sync_client.get(gw.url + "/t/bytes?n=5000001")
    assert len(r.content) == 5000001


def test_chunked_upload_is_streamed(gw, sync_client):
    def gen():
        for _ in range(50):
            yield b"y" * 10000

    r = sync_client.post(gw.url + "/t/upload", content=gen())
    assert r.json()["body_len"] == 500000


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


GIB = 1024**3


@pytest.mark.slow
def test_one_gib_upload_and_download_with_bounded_memory(gateway, upstream):
    cfg = config_for(upstream)
    cfg["routers"][1]["max_body_size"] = 0
    gw = gateway(cfg)
    with httpx.Client(timeout=120, trust_env=False) as c:
        c.get(gw.url + "/t/echo")  # warm up: imports, pools
        before = rss_kib(gw.pid)

        def gen():
            chunk = b"u" * (1024 * 1024)
            for _ in range(1024):
                yield chunk

        r = c.post(gw.url + "/t/upload", content=gen(), headers={"content-length": str(GIB)})
        assert r.json()["body_len"] == GIB
        received = 0
        with c.stream("GET", gw.url + f"/t/bytes?n={GIB}") as resp:
            for chunk in resp.iter_raw(1024 * 1024):
                received += len(chunk)
        assert received == GIB
    peak = rss_kib(gw.pid, "VmHWM")
    assert peak - before < 50 * 1024, f"gateway RSS grew by {(peak - before) / 1024:.1f} MiB"


def test_connect_timeout_is_504_timeout(gateway, upstream, sync_client):
    # A listener that never accepts, its queue already full: the kernel drops further
    # SYNs, so connecting times out (all on loopback).
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    try:
        cfg = config_for(upstream, connect_timeout_ms=200, timeout_ms=5000)
        cfg["routers"][0]["port"] = port
        gw = gateway(cfg)
        r = sync_client.get(gw.url + "/api/users/1")
        assert r.status_code == 504
        assert r.json()["type"] == "timeout"
        assert "connecting" in r.json()["error"] and str(port) not in r.text
    finally:
        for s in fillers:
            s.close()
        blackhole.close()


def test_response_hop_by_hop_headers_are_removed():
    from kairos.proxy.exchange import response_headers

    raw = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Internal", b"secret"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Trailer", b"X-Checksum"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert response_headers(raw) == [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


async def test_endless_stream_stops_when_the_client_leaves(gw, upstream, client):
    # uvicorn's send() is silent once the client is gone; without watching for the
    # disconnect the gateway would keep reading this stream from the upstream forever.
    async with client.stream("GET", gw.url + "/t/sse?events=100000&interval_ms=20") as r:
        first = await asyncio.wait_for(r.aiter_raw().__anext__(), timeout=5)
        assert first.startswith(b"data: 0")
    for _ in range(100):
        if upstream.requests[-1].cancelled:
            break
        await asyncio.sleep(0.05)
    assert upstream.requests[-1].cancelled, "the upstream stream was still being read after the client left"


async def test_a_silent_upstream_body_is_cut_after_read_timeout(gateway, upstream, client):
    cfg = config_for(upstream)
    cfg["routers"][1]["read_timeout_ms"] = 300
    gw = gateway(cfg)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):  # aborted, never passed off as a complete body
        async with client.stream("GET", gw.url + "/t/stream?chunks=2&size=10&interval_ms=5000") as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                received += chunk
    assert received == b"a" * 10
    event = gw.wait_for_log(lambda rec: rec.get("event") == "upstream_error")
    assert event["kind"] == "timeout" and "after 10 body bytes" in event["error"]


def test_read_timeout_zero_means_no_limit(gateway, upstream, sync_client):
    cfg = config_for(upstream, read_timeout_ms=0)
    gw = gateway(cfg)
    r = sync_client.get(gw.url + "/t/stream?chunks=2&size=10&interval_ms=400")
    assert r.content == b"a" * 10 + b"b" * 10


def test_too_many_or_too_large_headers_are_431(gw, upstream):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    status, headers, body = raw_request(gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")
    assert status == 431
    assert json.loads(body)["type"] == "header_too_large"
    assert dict(headers)["x-content-type-options"] == "nosniff"
    big = b"X-Big: " + b"b" * 40000 + b"\r\n"
    status, _, body = raw_request(gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\n" + big + b"Connection: close\r\n\r\n")
    assert status == 431 and "bytes" in json.loads(body)["error"]
    status, _, _ = raw_request(gw.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")
    assert status == 431
    assert upstream.count == 0
    status, _, _ = raw_request(gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\nX-Some: " + b"s" * 8000 + b"\r\nConnection: close\r\n\r\n")
    assert status == 200


def test_header_limits_can_be_lifted(gateway, upstream):
    gw = gateway(config_for(upstream, server={"max_headers": 0, "max_header_bytes": 0}))
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(110))  # above our default, below the test upstream's own cap
    status, _, _ = raw_request(gw.port, b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")
    assert status == 200
