"""Idle keep-alive connections per origin, and the requests waiting for one."""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterable

from kairos.upstream.connection import Headers, Response, _Connection, _retrieve, _send_body
from kairos.upstream.errors import UpstreamConnectError, UpstreamConnectTimeout


class _Origin:
    """One (scheme, host, port): its idle connections, and requests waiting for one."""

    __slots__ = ("idle", "waiters", "connecting")

    def __init__(self) -> None:
        self.idle: list[_Connection] = []
        # Futures of requests waiting: a released connection (handed over directly,
        # oldest waiter first) or None (a connect slot came free).
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.connecting = 0


class UpstreamPool:
    """Idle keep-alive connections per (scheme, host, port).

    At most `max_connecting` connects per origin are in progress at once; other
    requests wait, first come first served, for a released connection or a free
    slot. Without that cap a burst of 2,000 new clients opened 2,000 upstream
    connections at once, overflowed the upstream's listen backlog (nginx: 511),
    and the dropped SYNs came back only after 1-3 s retransmit timeouts.
    """

    def __init__(
        self,
        keepalive_expiry_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        max_connecting: int = 64,
    ) -> None:
        self.keepalive_expiry_s = keepalive_expiry_s
        self.max_connecting = max_connecting
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._ssl = ssl_context
        self._last_sweep = time.monotonic()
        self.closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _origin(self, key: tuple[str, str, int]) -> _Origin:
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        return origin

    def _put(self, key: tuple[str, str, int], conn: _Connection) -> None:
        if self.closed:
            conn.close()
            return
        origin = self._origin(key)
        waiters = origin.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        now = time.monotonic()
        conn.idle_since = now
        origin.idle.append(conn)
        if now - self._last_sweep > self.keepalive_expiry_s:
            self._sweep(now)

    @staticmethod
    def _release_slot(origin: _Origin) -> None:
        """A connect finished: hand its slot to the oldest waiter, or give it back."""
        waiters = origin.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; `connecting` stays as it is
                return
        origin.connecting -= 1

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        limit = now - self.keepalive_expiry_s
        for key, origin in list(self._origins.items()):
            keep = []
            for conn in origin.idle:
                if conn.closed or conn.idle_since < limit:
                    conn.close()
                else:
                    keep.append(conn)
            origin.idle = keep
            if not keep and not origin.waiters and not origin.connecting:
                del self._origins[key]

    async def _acquire(self, key: tuple[str, str, int], connect_timeout: float | None) -> _Connection:
        origin = self._origin(key)
        idle = origin.idle
        if idle:
            limit = time.monotonic() - self.keepalive_expiry_s
            while idle:
                conn = idle.pop()
                if not conn.closed and conn.idle_since >= limit:
                    return conn
                conn.close()
        if origin.connecting < self.max_connecting and not origin.waiters:
            origin.connecting += 1
        else:
            # Queue behind earlier requests (no barging: a newcomer never overtakes a waiter).
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            origin.waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # Woken and cancelled in the same breath: pass on what we were given.
                    if (gift := waiter.result()) is not None:
                        self._put(key, gift)
                    else:
                        self._release_slot(origin)
                raise
            if handed is not None:
                return handed
            # handed None: a connect slot is ours.
        try:
            return await self._connect(key, connect_timeout)
        finally:
            self._release_slot(origin)

    async def _connect(self, key: tuple[str, str, int], connect_timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        try:
            connect = loop.create_connection(
                lambda: _Connection(loop),
                host,
                port,
                ssl=self._ssl_context() if scheme == "https" else None,
                server_hostname=host if scheme == "https" else None,
            )
            if connect_timeout is None:
                _, conn = await connect
            else:
                async with asyncio.timeout(connect_timeout):
                    _, conn = await connect
        except TimeoutError:
            raise UpstreamConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except socket.gaierror as exc:
            raise UpstreamConnectError(f"cannot resolve {host}: {exc.strerror}") from None
        except ssl.SSLError as exc:
            raise UpstreamConnectError(f"TLS handshake with {host}:{port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise UpstreamConnectError(f"connection to {host}:{port} failed: {exc.strerror or exc}") from None
        sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    async def request(
        self,
        scheme: str,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterable[bytes] | bytes | None = None,
        connect_timeout: float | None = None,
    ) -> Response:
        """Send one request; returns once the response head has arrived (body still unread)."""
        key = (scheme, host, port)
        conn = await self._acquire(key, connect_timeout)
        response = Response(conn, self, key, head_only=method == "HEAD")
        conn.begin(response)
        parts = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        chunked = False
        if isinstance(body, (bytes, bytearray)):
            if not has_length:
                parts.append(b"content-length: %d\r\n" % len(body))
            parts += (b"\r\n", body)
            body = None
        elif body is not None and not has_length:
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        else:
            parts.append(b"\r\n")
        transport = conn.transport
        assert transport is not None
        transport.write(b"".join(parts))
        if body is not None:
            writer = asyncio.ensure_future(_send_body(conn, response, body, chunked))
            writer.add_done_callback(_retrieve)
            response._writer = writer
        try:
            await response._head
        except BaseException:
            response.release()
            raise
        return response

    async def aclose(self) -> None:
        self.closed = True
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.close()
            for waiter in origin.waiters:
                if not waiter.done():
                    waiter.set_exception(UpstreamConnectError("the gateway is shutting down"))
        self._origins.clear()
