"""Response compression (gzip, br, deflate, zstd), per route, streaming.

The coding is negotiated from `Accept-Encoding` by q-value: the highest q wins,
the configured order of `algorithms` breaks ties, `*` covers codings not listed,
`q=0` excludes, and an explicit `identity` preferred over every coding keeps the
body as it is. No acceptable coding means no compression.

A response is compressed only when it has a body worth it: not HEAD, not
1xx/204/206/304, no Content-Range, no Content-Encoding already, no
`Cache-Control: no-transform`, a content type matching `content_types`, never
`text/event-stream` (events must reach clients unbuffered), and a declared
Content-Length of at least `min_size` (a body of unknown length is compressed).
Eligible responses get `Vary: Accept-Encoding` whether or not this client's
request led to compression, so caches downstream keep the variants apart.

Each body chunk is compressed and flushed as it arrives, so chunked responses
stay incremental and memory is bounded by the chunk size whatever the body's.

Why not Starlette's GZipMiddleware: gzip only, no q-values, no `no-transform`,
no ETag weakening, and it holds the response start back until the first body
chunk; this layer decides on the headers alone.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING, Any

import brotli

try:
    from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[no-redef]

from kairos.config.compression import CompressionConfig
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

_NO_BODY_STATUSES = frozenset((204, 206, 304))
_ZSTD_FLUSH_BLOCK = zstd.ZstdCompressor.FLUSH_BLOCK
_ZSTD_FLUSH_FRAME = zstd.ZstdCompressor.FLUSH_FRAME


# --------------------------------------------------------------------------- codecs
def codec_level(coding: str, level: int) -> int:
    """kairos-rs's level 1-9 mapped onto the part of each codec's range fit for on-the-fly use.

    gzip, deflate and zstd take 1-9 as is; brotli gets 1-8, linearly. Measured on a
    10 KiB JSON body (docs/compression.md): brotli above 8 and zstd above 9 cost
    10-80 times more per response for at most a few percent smaller output.
    """
    if coding == "br":
        return round(1 + (level - 1) * 7 / 8)
    return level


class _Zlib:
    __slots__ = ("_c",)

    def __init__(self, level: int, wbits: int) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush()


class _Brotli:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = brotli.Compressor(quality=level)

    def chunk(self, data: bytes) -> bytes:
        return self._c.process(data) + self._c.flush()

    def finish(self, data: bytes) -> bytes:
        return self._c.process(data) + self._c.finish()


class _Zstd:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = zstd.ZstdCompressor(level=level)

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data, mode=_ZSTD_FLUSH_BLOCK)

    def finish(self, data: bytes) -> bytes:
        return self._c.compress(data, mode=_ZSTD_FLUSH_FRAME)


def encoder(coding: str, level: int) -> _Zlib | _Brotli | _Zstd:
    """A fresh streaming encoder for `coding` at kairos level `level` (1-9)."""
    native = codec_level(coding, level)
    if coding == "gzip":
        return _Zlib(native, 31)
    if coding == "deflate":  # the HTTP "deflate" coding is the zlib format (RFC 9110 8.4.1.2)
        return _Zlib(native, 15)
    if coding == "br":
        return _Brotli(native)
    if coding == "zstd":
        return _Zstd(native)
    raise ValueError(f"unknown coding {coding!r}")


def compress_whole(coding: str, level: int, data: bytes) -> bytes:
    """A body that arrived in one piece, in one call (no streaming context: zstd's costs ~40 µs to set up)."""
    native = codec_level(coding, level)
    if coding == "gzip":
        return zlib.compress(data, native, 31)
    if coding == "deflate":
        return zlib.compress(data, native)
    if coding == "br":
        return brotli.compress(data, quality=native)
    if coding == "zstd":
        return zstd.compress(data, level=native)
    raise ValueError(f"unknown coding {coding!r}")


# --------------------------------------------------------------------------- negotiation
def parse_accept_encoding(value: str) -> dict[str, float]:
    """`Accept-Encoding` as {coding: q}; the first mention of a coding counts, bad q-values drop the entry."""
    out: dict[str, float] = {}
    for part in value.split(","):
        token, _, params = part.partition(";")
        token = token.strip().lower()
        if not token:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = -1.0
                if not 0.0 <= q <= 1.0:
                    q = -1.0
        if q < 0:
            continue
        if token == "x-gzip":
            token = "gzip"
        out.setdefault(token, q)
    return out


def negotiate(accept_encoding: str, codings: tuple[str, ...]) -> str | None:
    """The coding to use for a request's `Accept-Encoding`, or None for the body as is."""
    accepted = parse_accept_encoding(accept_encoding)
    star = accepted.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in codings:  # strict '>' keeps the configured order on ties
        q = accepted.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    if best is not None and accepted.get("identity", 0.0) > best_q:
        return None
    return best


def _media_pattern(patterns: list[str]) -> re.Pattern[str]:
    parts = []
    for p in patterns:
        parts.append(re.escape(p).replace(r"\*", "[^;]*"))
    return re.compile("(?:" + "|".join(parts) + ")$")


# --------------------------------------------------------------------------- the layer
CACHED_BODY = "kairos.cached_body"  # scope key set by the cache when it answers with a stored body
ENCODED_BUDGET = 8 * 1024 * 1024


class EncodedBodies:
    """Compressed forms of cached bodies, LRU within a byte budget: a cache hit is compressed
    once per coding, not once per request."""

    __slots__ = ("budget", "used", "_bodies")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._bodies: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        data = self._bodies.get(key)
        if data is not None:
            self._bodies.move_to_end(key)
        return data

    def put(self, key: tuple[Any, ...], data: bytes) -> None:
        if len(data) > self.budget // 8 or key in self._bodies:
            return
        self._bodies[key] = data
        self.used += len(data)
        while self.used > self.budget:
            _, old = self._bodies.popitem(last=False)
            self.used -= len(old)


class CompressionPolicy:
    """A route's compiled `compression` block."""

    __slots__ = ("level", "min_size", "codings", "_types", "_type_cache", "_ae_cache", "encoded")

    def __init__(self, config: CompressionConfig) -> None:
        self.encoded = EncodedBodies(ENCODED_BUDGET)
        self.level = config.level
        self.min_size = config.min_size
        self.codings = config.codings()
        self._types = _media_pattern(config.content_types)
        self._type_cache: dict[bytes, bool] = {}
        self._ae_cache: dict[bytes, str | None] = {}

    def coding_for(self, accept_encoding: bytes) -> str | None:
        cache = self._ae_cache
        try:
            return cache[accept_encoding]
        except KeyError:
            pass
        coding = negotiate(accept_encoding.decode("latin-1"), self.codings)
        if len(cache) >= 512:  # clients send a handful of distinct values; bound the odd ones
            cache.clear()
        cache[accept_encoding] = coding
        return coding

    def type_matches(self, content_type: bytes) -> bool:
        cache = self._type_cache
        try:
            return cache[content_type]
        except KeyError:
            pass
        media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        ok = media != "text/event-stream" and self._types.match(media) is not None
        if len(cache) >= 512:
            cache.clear()
        cache[content_type] = ok
        return ok


def _vary_has_accept_encoding(values: list[bytes]) -> bool:
    for value in values:
        for item in value.split(b","):
            item = item.strip().lower()
            if item == b"accept-encoding" or item == b"*":
                return True
    return False


class Compression:
    """Compress a route's responses per its `CompressionPolicy` (module docstring)."""

    __slots__ = ("app", "policy")

    def __init__(self, app: ASGIApp, policy: CompressionPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return
        policy = self.policy
        accept: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value if accept is None else accept + b"," + value
        coding = policy.coding_for(accept) if accept else None
        enc: _Zlib | _Brotli | _Zstd | None = None
        compressing = False  # decided at the response start; the encoder is made at the first chunk
        started = False

        async def send_compressed(message: Message) -> None:
            nonlocal enc, compressing, started
            if compressing and message["type"] == "http.response.body":
                body = message.get("body", b"")
                if message.get("more_body", False):
                    if body:
                        if enc is None:
                            enc = encoder(coding, policy.level)  # type: ignore[arg-type]
                        message["body"] = enc.chunk(body)
                        await send(message)
                    return
                if enc is None:
                    cached = scope.get(CACHED_BODY)
                    if cached is not None:  # the cache's stored body: compressed once per coding
                        key = (cached, len(body), coding)
                        data = policy.encoded.get(key)
                        if data is None:
                            data = compress_whole(coding, policy.level, body)  # type: ignore[arg-type]
                            policy.encoded.put(key, data)
                        message["body"] = data
                    else:
                        message["body"] = compress_whole(coding, policy.level, body)  # type: ignore[arg-type]
                else:
                    message["body"] = enc.finish(body)
                compressing = False
                enc = None
                await send(message)
                return
            if message["type"] == "http.response.start" and not started:
                started = True
                headers = self._eligible(message)
                if headers is not None:
                    if coding is not None:
                        headers = _compressed_headers(headers, coding)
                        compressing = True
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_compressed)

    def _eligible(self, message: Message) -> list[tuple[bytes, bytes]] | None:
        """The response's headers with Vary merged when it may be compressed, else None."""
        status = message["status"]
        if status < 200 or status in _NO_BODY_STATUSES:
            return None
        headers = list(message.get("headers") or ())
        content_type = None
        vary: list[bytes] = []
        for name, value in headers:
            name = name.lower()
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                try:
                    if int(value) < self.policy.min_size:
                        return None
                except ValueError:
                    return None
            elif name == b"content-encoding":
                if value.strip().lower() != b"identity":
                    return None
            elif name == b"content-range":
                return None
            elif name == b"cache-control":
                if b"no-transform" in value.lower():
                    return None
            elif name == b"vary":
                vary.append(value)
        if content_type is None or not self.policy.type_matches(content_type):
            return None
        if not _vary_has_accept_encoding(vary):
            if vary:
                joined = b", ".join(vary) + b", Accept-Encoding"
                headers = [(n, v) for n, v in headers if n.lower() != b"vary"]
                headers.append((b"vary", joined))
            else:
                headers.append((b"vary", b"Accept-Encoding"))
        return headers


def _compressed_headers(headers: list[tuple[bytes, bytes]], coding: str) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length" or lname == b"content-encoding":
            continue
        if lname == b"etag" and value.startswith(b'"'):
            value = b"W/" + value  # the bytes differ now: only a weak validator still holds
        out.append((name, value))
    out.append((b"content-encoding", coding.encode("ascii")))
    return out


def compression_policy(config: CompressionConfig | None) -> CompressionPolicy | None:
    """The compiled policy, or None when compression is off (the route then pays nothing)."""
    if config is None or not config.enabled:
        return None
    return CompressionPolicy(config)


def compression_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    policy = compression_policy(route.policy("compression"))
    return None if policy is None else partial(Compression, policy=policy)
