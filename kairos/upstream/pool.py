"""Connections per origin, and the requests waiting for one: Envoy's cluster thresholds.

Each (scheme, host, port, limits) has its own set of connections (routes with
different `connection_pool` settings to the same backend do not share them, as
two Envoy clusters would not):

* at most `max_connections` open (idle, busy or connecting), at most
  `max_pending` requests queued for one (beyond that `UpstreamOverloaded` at
  once: 503), first come first served, a newcomer never overtakes a waiter;
* at most 64 connects in progress at once per origin: without that cap a burst
  of 2,000 new clients opened 2,000 upstream connections at once, overflowed
  nginx's listen backlog (511) and the dropped SYNs came back only after 1-3 s;
* idle connections reused LIFO (the warmest first), at most `max_idle` kept,
  closed by a timer `idle_timeout` after their last use even with no traffic,
  and after `max_requests_per_connection` exchanges (0: no limit);
* a connection that closed or turned readable while it waited (an upstream's
  own idle timeout: uvicorn closes after 5 s) leaves the pool the moment the
  loop sees it, and is checked again (one poll(2), ~0.3 µs) when it is taken,
  so a request is never written to it: it goes out on another connection.
  That is what makes the 60 s default safe against upstreams that close sooner;
  the one race left is a close crossing the request on the wire, which fails
  the attempt at once as a reset (never by waiting for a timeout).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterable
from typing import Any

from kairos.observability import metrics
from kairos.upstream.connection import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    Connection,
    Headers,
    Response,
    build_head,
    start_body,
)
from kairos.upstream.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamOverloaded,
    UpstreamReset,
)

MAX_CONNECTING = 64


@dataclasses.dataclass(frozen=True, slots=True)
class PoolLimits:
    """One origin's thresholds (the `connection_pool` config block)."""

    max_connections: int = 1024
    max_pending: int = 1024
    max_idle: int = 128
    idle_timeout_s: float = 60.0
    max_requests_per_connection: int = 0  # 0: unlimited
    _hash: int = dataclasses.field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Part of every request's origin key: hash once, not per lookup.
        object.__setattr__(self, "_hash", hash(dataclasses.astuple(self)[:5]))

    def __hash__(self) -> int:
        return self._hash


DEFAULT_LIMITS = PoolLimits()


@functools.lru_cache(maxsize=256)
def pool_limits(config: Any) -> PoolLimits:
    """PoolLimits from a `connection_pool` config block (kairos.config.connection_pool)."""
    return PoolLimits(
        max_connections=config.max_connections,
        max_pending=config.max_pending,
        max_idle=config.max_idle,
        idle_timeout_s=config.idle_timeout_ms / 1000,
        max_requests_per_connection=config.max_requests_per_connection,
    )
OriginKey = tuple[str, str, int, PoolLimits]


class Origin:
    """One (scheme, host, port, limits): its connections and the requests waiting for one."""

    __slots__ = ("key", "label", "limits", "idle", "waiters", "open", "connecting", "timer")

    def __init__(self, key: OriginKey) -> None:
        self.key = key
        scheme, host, port, limits = key
        self.label = f"{scheme}://{host}:{port}"
        self.limits = limits
        self.idle: collections.deque[Connection] = collections.deque()  # oldest left, warmest right
        # Requests waiting: each future gets a connection (handed over) or None (a
        # connect slot: `open` and `connecting` were already counted for it).
        self.waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self.open = 0  # idle + busy + connecting
        self.connecting = 0
        self.timer: asyncio.TimerHandle | None = None

    @property
    def in_use(self) -> int:
        return self.open - len(self.idle) - self.connecting

    @property
    def pending(self) -> int:
        return len(self.waiters)  # a waiter leaves the queue when served or cancelled


class UpstreamPool:
    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        max_connecting: int = MAX_CONNECTING,
        limits: PoolLimits = DEFAULT_LIMITS,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.max_connecting = max_connecting
        self.limits = limits
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._origins: dict[OriginKey, Origin] = {}
        self._ssl = ssl_context
        self.closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _origin(self, key: OriginKey) -> Origin:
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = Origin(key)
            label = origin.label
            metrics.POOL_GAUGES.track(
                label, lambda: self.stats(label)[0], lambda: self.stats(label)[1]
            )
        return origin

    def stats(self, label: str) -> tuple[int, int, int]:
        """(in use, pending, idle) for one origin (`scheme://host:port`), all its partitions summed."""
        in_use = pending = idle = 0
        for origin in self._origins.values():
            if origin.label == label:
                in_use += origin.in_use
                pending += origin.pending
                idle += len(origin.idle)
        return in_use, pending, idle

    # --- accounting -----------------------------------------------------------------------

    def _grant(self, origin: Origin) -> None:
        """Hand connect slots to waiters while the limits allow."""
        waiters = origin.waiters
        while waiters and origin.open < origin.limits.max_connections and origin.connecting < self.max_connecting:
            waiter = waiters.popleft()
            if not waiter.done():
                origin.open += 1
                origin.connecting += 1
                waiter.set_result(None)

    def _closed(self, origin: Origin) -> None:
        """One of the origin's connections is gone for good."""
        origin.open -= 1
        if origin.waiters:
            self._grant(origin)

    def _forget(self, origin: Origin) -> None:
        del self._origins[origin.key]
        if origin.timer is not None:
            origin.timer.cancel()
        if not any(o.label == origin.label for o in self._origins.values()):
            metrics.POOL_GAUGES.drop(origin.label)

    def _release(self, origin: Origin, conn: Connection, reusable: bool) -> None:
        """The exchange on `conn` is over (Response.release)."""
        limits = origin.limits
        if (
            not reusable
            or self.closed
            or (limits.max_requests_per_connection and conn.requests >= limits.max_requests_per_connection)
        ):
            conn.close()
            self._closed(origin)
            return
        waiters = origin.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # straight to the oldest waiter (it checks the connection again)
                return
        idle = origin.idle
        if len(idle) >= limits.max_idle:
            conn.close()
            self._closed(origin)
            return
        conn.idle_since = time.monotonic()
        conn.idle = True
        idle.append(conn)
        if origin.timer is None:
            origin.timer = asyncio.get_running_loop().call_later(limits.idle_timeout_s, self._expire, origin)

    def _idle_lost(self, origin: Origin, conn: Connection) -> None:
        conn.idle = False
        try:
            origin.idle.remove(conn)
        except ValueError:
            return
        conn.close()
        self._closed(origin)

    def _expire(self, origin: Origin) -> None:
        """The idle timer: close what has been idle too long, re-arm for the rest."""
        origin.timer = None
        idle = origin.idle
        limit = time.monotonic() - origin.limits.idle_timeout_s
        while idle and idle[0].idle_since <= limit:
            conn = idle.popleft()
            conn.idle = False
            conn.close()
            self._closed(origin)
        if idle and self._origins.get(origin.key) is origin:
            delay = idle[0].idle_since + origin.limits.idle_timeout_s - time.monotonic()
            origin.timer = asyncio.get_running_loop().call_later(max(delay, 0.001), self._expire, origin)

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = origin.idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.usable():
                return conn
            conn.close()
            self._closed(origin)
        return None

    # --- acquiring ------------------------------------------------------------------------

    async def _acquire(
        self, origin: Origin, connect_timeout: float | None, pool_timeout: float | None = None
    ) -> Connection:
        conn = self._take_idle(origin)
        if conn is not None:
            return conn
        limits = origin.limits
        if origin.open < limits.max_connections and origin.connecting < self.max_connecting and not origin.waiters:
            origin.open += 1
            origin.connecting += 1
        else:
            if origin.pending >= limits.max_pending:
                raise UpstreamOverloaded(
                    f"{origin.label}: {limits.max_pending} requests already wait for a connection"
                )
            # Queue behind earlier requests (no barging: a newcomer never overtakes a waiter).
            waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            origin.waiters.append(waiter)
            try:
                if pool_timeout is None:
                    handed = await waiter
                else:
                    async with asyncio.timeout(pool_timeout):
                        handed = await waiter
            except (TimeoutError, asyncio.CancelledError) as exc:
                if not waiter.done() or waiter.cancelled():
                    try:
                        origin.waiters.remove(waiter)
                    except ValueError:
                        pass
                else:
                    # Woken and given up in the same breath: pass on what we were given.
                    gift = waiter.result()
                    if gift is not None:
                        self._release(origin, gift, not gift.closed)
                    else:
                        origin.connecting -= 1
                        self._closed(origin)
                if isinstance(exc, TimeoutError):
                    raise UpstreamOverloaded(f"{origin.label}: no connection free within {pool_timeout:g} s") from None
                raise
            if handed is not None:
                if handed.usable():
                    return handed
                # It closed during the hand-over: its place is ours, connect in its stead.
                handed.close()
                origin.connecting += 1
        try:
            conn = await self._open(origin, connect_timeout)
        except BaseException:
            origin.connecting -= 1
            self._closed(origin)
            raise
        conn.release_to = functools.partial(self._release, origin)
        conn.on_idle_lost = functools.partial(self._idle_lost, origin)
        origin.connecting -= 1
        if origin.waiters:
            self._grant(origin)
        return conn

    async def _open(self, origin: Origin, connect_timeout: float | None) -> Connection:
        """A new connection to the origin (TCP, or TLS for https)."""
        scheme, host, port, _ = origin.key
        loop = asyncio.get_running_loop()
        try:
            connect = loop.create_connection(
                lambda: Connection(loop),
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
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return conn

    # --- the exchange ---------------------------------------------------------------------

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
        limits: PoolLimits | None = None,
        upgrade: bool = False,
        pool_timeout: float | None = None,
    ) -> Response:
        """Send one request; returns once the response head has arrived (body still unread).

        The head is built and checked before a connection is taken: an invalid request
        (InvalidUpstreamRequest) never holds or leaks one."""
        head, chunked = build_head(method, target, headers, body)
        if self.closed:
            raise UpstreamConnectError("the gateway is shutting down")
        origin = self._origin((scheme, host, port, limits or self.limits))
        conn = await self._acquire(origin, connect_timeout, pool_timeout)
        response = Response(conn, method == "HEAD", upgrade, self.max_headers, self.max_header_bytes)
        transport = conn.transport
        if conn.closed or transport is None or transport.is_closing():
            # Lost between the check and now (cannot happen without a yield, kept as a guard).
            conn.close()
            self._closed(origin)
            raise UpstreamReset("the connection closed before the request was written")
        conn.begin(response)
        if isinstance(body, (bytes, bytearray)):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            if body is not None:
                start_body(conn, response, body, chunked)
        try:
            await response._head
        except BaseException:
            response.release()
            raise
        return response

    def retain(self, keys: set[tuple[str, str, int]]) -> None:
        """Close the idle connections of origins not in `keys` (a reload removed their backends);
        their busy ones close when their exchange ends."""
        for origin in list(self._origins.values()):
            if origin.key[:3] not in keys:
                self._close_idle(origin)
                if not origin.open and not origin.waiters:
                    self._forget(origin)

    def _close_idle(self, origin: Origin) -> None:
        idle = origin.idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            conn.close()
            self._closed(origin)

    async def aclose(self) -> None:
        self.closed = True
        for origin in list(self._origins.values()):
            for waiter in origin.waiters:
                if not waiter.done():
                    waiter.set_exception(UpstreamConnectError("the gateway is shutting down"))
            origin.waiters.clear()
            self._close_idle(origin)
            if self._origins.get(origin.key) is origin:
                self._forget(origin)
        self._origins.clear()
