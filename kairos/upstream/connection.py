"""A lean HTTP/1.1 client connection pool for the proxy's hot path.

Measured on this machine (one core, 64 concurrent keep-alive requests to nginx):
aiohttp's client managed ~4,000-7,000 requests/s on its own, a bare asyncio
protocol with httptools' parser ~22,000. Most of aiohttp's cost is machinery a
proxy does not want (cookie jar, auto headers, redirects, tracing, per-request
timeout objects, header re-merging), so the gateway speaks HTTP/1.1 to its
upstreams itself:

* one in-flight request per connection, idle connections kept per origin (LIFO,
  so the warmest one is reused) and dropped after `keepalive_expiry_s`, below
  uvicorn's 5 s idle timeout;
* headers are written exactly as given (bytes), nothing is added but framing
  (`content-length` for a bytes body that lacks it, `transfer-encoding: chunked`
  for a streamed body of unknown length);
* the response body is streamed with backpressure: reading from the upstream
  pauses while more than `_HIGH_WATER` bytes wait for the client;
* no retries of any kind: a connection that fails is closed and reported.

httptools (llhttp) parses responses; it has no "finish" call, so an
EOF-delimited body ends in `connection_lost`, and a HEAD response (whose
Content-Length describes a body that never comes) closes its connection
instead of confusing the parser.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterable

import httptools

from kairos.upstream.errors import (
    RequestBodyFailed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
)

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
Headers = list[tuple[bytes, bytes]]


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries at most one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._connection_lost(exc)
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamReset("upstream closed the connection while the request was sent"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.response is not None:
                self.response._fail(UpstreamReset(f"malformed response from upstream: {exc}"))
            self.close()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response._headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            response._headers = []
            response._interim = True
            return
        response._head_received(status, self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.response._body_received(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        response = self.response
        if response is None:
            return
        if response._interim:
            response._interim = False
            return
        response._complete()

    # --- use ----------------------------------------------------------------------------------

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamReset("upstream closed the connection while the request was sent")
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def begin(self, response: Response) -> None:
        self.response = response
        self._parser = httptools.HttpResponseParser(self)

    def finish(self) -> None:
        self.response = None
        self._parser = None


class Response:
    """An upstream response whose body is read chunk by chunk (`await read()` -> b"" at the end).

    `release()` hands the connection back to the pool when the exchange ended
    cleanly, and closes it otherwise. Always call it (the proxy does, in finally).
    """

    __slots__ = (
        "status", "_headers", "_conn", "_pool", "_key", "_head", "_chunks", "_buffered",
        "_done", "_error", "_waiter", "_keep_alive", "_interim", "_reading_paused",
        "_eof_body", "_writer", "_head_only", "_released", "read_timeout",
    )

    def __init__(self, conn: _Connection, pool: UpstreamPool, key: tuple[str, str, int], head_only: bool) -> None:
        self.status = 0
        self._headers: Headers = []
        self._conn = conn
        self._pool = pool
        self._key = key
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._interim = False
        self._reading_paused = False
        self._eof_body = False
        self._writer: asyncio.Task[None] | None = None
        self._head_only = head_only
        self._released = False
        # Longest wait for the next piece of body (None: no limit). Set by the caller.
        self.read_timeout: float | None = None

    @property
    def raw_headers(self) -> Headers:
        return self._headers

    # --- called by the connection -------------------------------------------------------------

    def _head_received(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self._keep_alive = keep_alive
        if self._head_only or status in (204, 304):
            self._done = True
            self._keep_alive = keep_alive and not self._head_only
        else:
            framed = False
            for name, value in self._headers:
                lname = name.lower()
                if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
                    framed = True
                    break
            self._eof_body = not framed
        if not self._head.done():
            self._head.set_result(None)

    def _body_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self._conn.transport is not None:
            self._reading_paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _complete(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._done and not self._chunks:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: the waiter may already be gone
        self._wake()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        if self._head.done() and self._eof_body and self._error is None:
            self._done = True  # the body was delimited by the close
            self._keep_alive = False
            self._wake()
            return
        if self._head.done():
            self._fail(UpstreamReset("upstream response was cut short"))
        else:
            self._fail(UpstreamReset("upstream closed the connection before answering"))

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- used by the proxy --------------------------------------------------------------------

    async def read(self) -> bytes:
        """The next chunk of the body, b"" at the end; raises UpstreamReset if it was cut short."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < _LOW_WATER and self._conn.transport is not None:
                    self._reading_paused = False
                    self._conn.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            loop = self._conn.loop
            waiter = self._waiter = loop.create_future()
            if self.read_timeout is None:
                await waiter
                continue
            # A timer only while actually waiting: a body already buffered costs nothing.
            timer = loop.call_later(self.read_timeout, self._read_timed_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    def _read_timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._error = UpstreamTimeout(f"the upstream sent nothing for {self.read_timeout:g} s")
            self._keep_alive = False
            waiter.set_result(None)

    def abort(self) -> None:
        """Stop now (the client left): the reader sees the end, the connection is closed."""
        if not self._done:
            self._done = True
            self._keep_alive = False
            self._chunks.clear()
            self._conn.close()
            self._wake()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        writer = self._writer
        reusable = (
            self._done
            and self._error is None
            and self._keep_alive
            and not self._chunks
            and not conn.closed
            and (writer is None or (writer.done() and not writer.cancelled() and writer.exception() is None))
        )
        if writer is not None and not writer.done():
            writer.cancel()
        conn.finish()
        if reusable:
            self._pool._put(self._key, conn)
        else:
            conn.close()


def _retrieve(task: asyncio.Task[None]) -> None:
    # The exchange already reports a body failure; don't let asyncio warn about it again.
    if not task.cancelled():
        task.exception()


async def _send_body(conn: _Connection, response: Response, body: AsyncIterable[bytes], chunked: bool) -> None:
    """Stream the request body; a failure here fails the exchange (and closes the connection)."""
    try:
        transport = conn.transport
        assert transport is not None
        async for chunk in body:
            if response._done or conn.closed:
                # The upstream answered (or went away) before reading it all: the
                # connection is mid-request and can never be reused.
                conn.close()
                return
            if chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                transport.write(chunk)
            await conn.drain()
        else:
            if chunked and not conn.closed:
                transport.write(b"0\r\n\r\n")
    except UpstreamError as exc:
        response._fail(exc)
        raise
    except Exception as exc:  # the client went away, or its body broke
        response._fail(RequestBodyFailed(f"request body failed: {exc.__class__.__name__}"))
        conn.close()
        raise
