"""Compression layer in process: negotiation, eligibility, headers, exact round trips, streaming."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib

import brotli
import pytest

try:
    from compression import zstd
except ImportError:
    from backports import zstd

from kairos.config.compression import CompressionConfig
from kairos.config.models import GatewayConfig
from kairos.middleware.compression import Compression, CompressionPolicy, negotiate

BODY = json.dumps([{"id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(200)]).encode()
DECODERS = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
    "zstd": zstd.decompress,
}


@pytest.mark.parametrize(
    "accept, codings, expected",
    [
        ("gzip", ("gzip",), "gzip"),
        ("", ("gzip",), None),
        ("identity", ("gzip",), None),
        ("gzip;q=0", ("gzip",), None),
        ("deflate, gzip;q=0.5, br", ("gzip", "br", "zstd"), "br"),  # highest q wins, listed ones only
        ("gzip, br", ("br", "gzip"), "br"),  # tie: configured order
        ("gzip, br", ("gzip", "br"), "gzip"),
        ("gzip;q=0.8, br;q=0.9", ("gzip", "br"), "br"),
        ("*", ("zstd", "gzip"), "zstd"),
        ("*;q=0.5, gzip;q=0.4", ("gzip", "br"), "br"),  # * covers what is not listed
        ("*;q=0, gzip", ("br", "gzip"), "gzip"),
        ("*, gzip;q=0", ("gzip",), None),
        ("identity;q=0", ("gzip",), None),  # nothing acceptable: the body goes as is
        ("identity;q=0, gzip;q=0.1", ("gzip",), "gzip"),
        ("gzip;q=0.5, identity", ("gzip",), None),  # identity explicitly preferred
        ("GZIP;Q=1", ("gzip",), "gzip"),
        ("x-gzip", ("gzip",), "gzip"),
        ("gzip;q=abc, br", ("gzip", "br"), "br"),  # a broken q drops only that entry
        ("gzip;q=2", ("gzip",), None),
        ("br", ("gzip",), None),
    ],
)
def test_negotiation(accept, codings, expected):
    assert negotiate(accept, codings) == expected


def policy(**kw) -> CompressionPolicy:
    return CompressionPolicy(CompressionConfig(enabled=True, **{"min_size": 100, **kw}))


async def run(layer_policy, headers, chunks, method="GET", accept=b"gzip", status=200):
    """Run the layer over an app answering `status`, `headers`, then `chunks`; return (start, bodies)."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        if not chunks:
            await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    req_headers = [(b"accept-encoding", accept)] if accept is not None else []
    scope = {"type": "http", "method": method, "headers": req_headers}
    await Compression(app, layer_policy)(scope, None, send)
    start = sent[0]
    return dict((n.decode(), v.decode()) for n, v in start["headers"]), [m.get("body", b"") for m in sent[1:]]


JSON = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize("level", [1, 6, 9])
async def test_each_codec_round_trips_exactly(coding, level):
    headers, bodies = await run(policy(algorithms=[coding], level=level), JSON + [(b"etag", b'"v1"')],
                                [BODY[:1000], BODY[1000:5000], BODY[5000:]], accept=coding.encode())
    assert headers["content-encoding"] == coding
    assert "content-length" not in headers
    assert headers["vary"] == "Accept-Encoding"
    assert headers["etag"] == 'W/"v1"'
    assert DECODERS[coding](b"".join(bodies)) == BODY


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_each_chunk_is_flushed_as_it_arrives(coding):
    """A streaming decoder recovers every chunk from the bytes sent for it, before the next one."""
    chunks = [b"event %d " % i * 40 for i in range(5)]
    _, bodies = await run(policy(algorithms=[coding]), [(b"content-type", b"text/plain")], chunks, accept=coding.encode())
    assert len(bodies) == 5 and all(bodies)
    if coding == "gzip":
        d = zlib.decompressobj(31)
        step = d.decompress
    elif coding == "deflate":
        d = zlib.decompressobj()
        step = d.decompress
    elif coding == "br":
        d = brotli.Decompressor()
        step = d.process
    else:
        d = zstd.ZstdDecompressor()
        step = d.decompress
    for chunk, sent in zip(chunks, bodies):
        assert step(sent) == chunk


@pytest.mark.parametrize(
    "case, method, status, headers",
    [
        ("HEAD", "HEAD", 200, JSON),
        ("204", "GET", 204, [(b"content-type", b"application/json")]),
        ("304", "GET", 304, JSON),
        ("206", "GET", 206, JSON),
        ("content-range", "GET", 200, JSON + [(b"content-range", b"bytes 0-9/100")]),
        ("already encoded", "GET", 200, JSON + [(b"content-encoding", b"br")]),
        ("no-transform", "GET", 200, JSON + [(b"cache-control", b"public, no-transform")]),
        ("type not listed", "GET", 200, [(b"content-type", b"image/png"), (b"content-length", b"5000")]),
        ("no type", "GET", 200, [(b"content-length", b"5000")]),
        ("too small", "GET", 200, [(b"content-type", b"application/json"), (b"content-length", b"99")]),
        ("sse", "GET", 200, [(b"content-type", b"text/event-stream")]),
    ],
)
async def test_left_alone(case, method, status, headers):
    p = policy(content_types=["text/*", "application/json"])
    start, bodies = await run(p, headers, [BODY], method=method, status=status)
    assert "vary" not in start or case == "HEAD"
    assert start.get("content-encoding") in (None, "br")
    assert b"".join(bodies) == BODY


async def test_unknown_length_is_compressed_when_the_type_matches():
    headers, bodies = await run(policy(), [(b"content-type", b"text/html; charset=utf-8")], [b"x" * 10, b"y" * 10])
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(b"".join(bodies)) == b"x" * 10 + b"y" * 10


async def test_wildcard_types_and_vary_merge_without_accepting_client():
    p = policy(content_types=["application/*+json"])
    headers, bodies = await run(p, [(b"content-type", b"application/problem+json"), (b"vary", b"Origin")], [BODY],
                                accept=None)
    assert "content-encoding" not in headers
    assert headers["vary"] == "Origin, Accept-Encoding"  # eligible: Vary tells caches, even uncompressed
    assert b"".join(bodies) == BODY
    headers, _ = await run(p, [(b"content-type", b"application/json"), (b"vary", b"accept-encoding")], [BODY])
    assert "content-encoding" not in headers  # application/json is not in this route's list


async def test_memory_stays_bounded_for_a_long_stream():
    """32 MiB through the layer in 64 KiB chunks: the peak allocation is a few chunks, not the body."""
    chunk = bytes(range(256)) * 256

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for _ in range(512):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    total = 0
    d = zlib.decompressobj(31)
    out = 0

    async def send(message):
        nonlocal total, out
        body = message.get("body", b"")
        total += len(body)
        out += len(d.decompress(body))

    tracemalloc.start()
    try:
        await Compression(app, policy(level=1))({"type": "http", "method": "GET",
                                                  "headers": [(b"accept-encoding", b"gzip")]}, None, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == 512 * len(chunk)
    assert peak < 4 * 1024 * 1024


def test_config_block_placement_and_errors():
    cfg = GatewayConfig.model_validate({
        "compression": {"enabled": True, "algorithms": ["brotli", "gzip", "br"]},
        "routers": [{"external_path": "/a", "internal_path": "/a", "methods": ["GET"], "host": "http://h", "port": 1,
                     "compression": {"enabled": False}}],
    })
    assert cfg.compression.codings() == ("br", "gzip")
    assert cfg.policy(cfg.routers[0], "compression").enabled is False
    with pytest.raises(Exception) as err:
        GatewayConfig.model_validate({"compression": {"level": 0, "algorithms": ["lz4"], "min_size": -1,
                                                      "content_types": ["*/json"]}})
    text = str(err.value)
    for path in ("compression.level", "compression.algorithms", "compression.min_size", "compression.content_types"):
        assert path in text
