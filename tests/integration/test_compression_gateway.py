"""Compression through a real gateway and real upstreams: every codec decoded by its real decoder
to the exact bytes, q-value negotiation, a router override, SSE untouched, chunks flushed as they
arrive, and bounded memory for a 1 GiB body."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import brotli
import httpx
import pytest
from aiohttp import web

try:
    from compression import zstd
except ImportError:
    from backports import zstd

from tests.scripted_upstream import ScriptedUpstream

BODY = json.dumps([{"id": i, "name": f"user{i}", "email": f"user{i}@example.com"} for i in range(300)]).encode()
DECODE = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress, "zstd": zstd.decompress}
GIB = 1024**3


@pytest.fixture
def scripted():
    up = ScriptedUpstream().start()
    yield up
    up.stop()


def route(path, up, **extra):
    return {"external_path": path + "/{rest:path}", "internal_path": "/{rest}", "methods": ["GET", "HEAD"],
            "backends": [up.backend()], **extra}


@pytest.fixture
def gw(gateway, scripted, upstream):
    scripted.on("/json", lambda r: web.Response(body=BODY, content_type="application/json",
                                               headers={"ETag": '"v1"'}))
    return gateway({
        "version": 1,
        "compression": {"enabled": True, "level": 6, "min_size": 100,
                        "algorithms": ["gzip", "brotli", "zstd", "deflate"]},
        "routers": [
            route("/c", scripted),
            route("/off", scripted, compression={"enabled": False}),
            route("/u", upstream, compression={"enabled": True, "level": 1, "algorithms": ["gzip"],
                                               "content_types": ["text/*", "application/octet-stream"]}),
        ],
    })


def fetch_raw(url, accept=None):
    with httpx.Client(timeout=30, trust_env=False) as c:
        del c.headers["accept-encoding"]  # httpx's default would negotiate for us
        headers = {"accept-encoding": accept} if accept is not None else {}
        with c.stream("GET", url, headers=headers) as r:
            return r, b"".join(r.iter_raw())


def test_each_codec_decodes_to_the_exact_bytes_and_q_values_decide(gw):
    for coding in ("gzip", "br", "zstd", "deflate"):
        r, raw = fetch_raw(gw.url + "/c/json", accept=coding)
        assert r.headers["content-encoding"] == coding
        assert "content-length" not in r.headers
        assert r.headers["vary"] == "Accept-Encoding"
        assert r.headers["etag"] == 'W/"v1"'
        assert len(raw) < len(BODY) / 3
        assert DECODE[coding](raw) == BODY, coding
    for accept, expected in [
        ("gzip;q=0.5, br", "br"),
        ("zstd;q=0.9, gzip;q=0.9", "gzip"),  # tie: the configured order decides
        ("*", "gzip"),
        ("*;q=0.1, gzip;q=0", "br"),
        ("identity;q=0", None),  # nothing acceptable: sent as is
        (None, None),
    ]:
        r, raw = fetch_raw(gw.url + "/c/json", accept=accept)
        assert r.headers.get("content-encoding") == expected, accept
        if expected is None:
            assert raw == BODY and r.headers["content-length"] == str(len(BODY))
            assert r.headers["etag"] == '"v1"'
        else:
            assert DECODE[expected](raw) == BODY
    r, raw = fetch_raw(gw.url + "/off/json", accept="gzip, br")  # the router's override switches it off
    assert "content-encoding" not in r.headers and "vary" not in r.headers and raw == BODY
    r, raw = fetch_raw(gw.url + "/u/sse?events=3&interval_ms=10", accept="gzip")  # SSE is never compressed
    assert "content-encoding" not in r.headers
    assert raw == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_each_chunk_reaches_the_client_before_the_next_exists(gw, scripted):
    """The upstream writes its second chunk only after the client decoded the first one."""
    release = asyncio.Event()

    async def stream(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"first chunk " * 20)
        await asyncio.wait_for(release.wait(), 20)
        await resp.write(b"second chunk " * 20)
        await resp.write_eof()
        return resp

    scripted.on("/stream", stream)
    d = zlib.decompressobj(31)
    got = b""
    with httpx.Client(timeout=30, trust_env=False) as c:
        with c.stream("GET", gw.url + "/c/stream", headers={"accept-encoding": "gzip"}) as r:
            assert r.headers["content-encoding"] == "gzip"
            for piece in r.iter_raw():
                got += d.decompress(piece)
                if got == b"first chunk " * 20:
                    scripted.call(release.set)
    assert got == b"first chunk " * 20 + b"second chunk " * 20


def rss_kib(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
def test_one_gib_compressed_with_bounded_memory(gw):
    with httpx.Client(timeout=120, trust_env=False) as c:
        c.get(gw.url + "/u/bytes?n=1000", headers={"accept-encoding": "gzip"})  # warm up
        before = rss_kib(gw.pid, "VmRSS")
        d = zlib.decompressobj(31)
        total = 0
        with c.stream("GET", gw.url + f"/u/bytes?n={GIB}", headers={"accept-encoding": "gzip"}) as r:
            assert r.headers["content-encoding"] == "gzip"
            for piece in r.iter_raw(1024 * 1024):
                total += len(d.decompress(piece))
        total += len(d.flush())
    assert total == GIB
    peak = rss_kib(gw.pid, "VmHWM")
    assert peak - before < 50 * 1024, f"gateway RSS grew by {(peak - before) / 1024:.1f} MiB"
