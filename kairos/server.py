"""uvicorn's Server with a greedy accept loop.

libuv (under uvloop) accepts one connection per event-loop iteration
(libuv/libuv#3696). Under load an iteration takes milliseconds, so a burst of
new clients waits in the kernel's accept queue: with 2,000 connections opened
at once through a busy gateway the queue held 1,000-1,700 connections for
seconds and wrk counted 5 s timeouts -- reproduced with a hello-world uvicorn
app, so not kairos's own doing. Here the listening socket is read by our own
reader callback, which accepts what is waiting (up to ACCEPT_BATCH per wake-up,
as asyncio's own loop does with its backlog) and hands each socket to the loop's
`connect_accepted_socket` with uvicorn's protocol. Everything else -- protocol,
lifespan, graceful shutdown -- stays uvicorn's.

HeadTimeoutProtocol is uvicorn's httptools protocol with a deadline for the request
head (`server.request_header_timeout_ms`, nginx's `client_header_timeout`): uvicorn
has a keep-alive timeout but none for a head that starts and then stalls, so one
byte every few seconds holds a connection forever (slowloris).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("uvicorn.error")
STARTUP_FAILURE = 3
# Connections taken per wake-up: enough to drain a burst in a few loop iterations, few
# enough that workers sharing one listening socket (--workers N) all get a share.
ACCEPT_BATCH = 64


class GreedyAcceptor:
    """Accepts every waiting connection on each wake-up; quacks like asyncio.Server for uvicorn."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        batch: int,
        owns_socket: bool,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.batch = max(1, batch)
        self.owns_socket = owns_socket
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self.batch):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # Out of descriptors, or worse: pause instead of spinning on the error.
                logger.error("cannot accept connections: %s; pausing for 1 s", exc.strerror)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(1.0, self._resume)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.create_task(self._serve(conn))

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self.owns_socket:
            self.sock.close()

    async def wait_closed(self) -> None:
        return None


DEFAULT_HEAD_TIMEOUT_S = 10.0


def _head_timeout_of(app: object) -> Callable[[], float]:
    """Where the head deadline is read: the served gateway's current config (a reload changes it)."""
    for _ in range(4):  # the app may sit inside uvicorn's own wrappers (`.app`)
        gateway = getattr(getattr(app, "state", None), "gateway", None)
        if gateway is not None:
            return lambda: gateway.runtime.config.server.request_header_timeout_ms / 1000
        app = getattr(app, "app", None)
    return lambda: DEFAULT_HEAD_TIMEOUT_S


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head does not arrive in time.

    The clock starts when the connection is made (a client that connects and sends nothing
    is cut too) and again at the first byte of each later request; it stops when the head
    is complete. Between requests uvicorn's own keep-alive timeout applies, and a slow body
    is the route's timeout's business. As nginx does, nothing is answered: the connection
    is closed.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.head_timeout = _head_timeout_of(self.app)
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:
            self._start_head_clock()

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _start_head_clock(self) -> None:
        timeout = self.head_timeout()
        if timeout > 0:
            self.head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and not cycle.response_complete):
            # A pipelined head waits while we answer the request before it (uvicorn stops
            # reading meanwhile): the wait is ours, so the clock starts again.
            self._start_head_clock()
            return
        self.transport.close()


class GatewayServer(uvicorn.Server):
    """uvicorn.Server whose listening sockets are served by GreedyAcceptor (no TLS, no UNIX sockets)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config
        loop = asyncio.get_running_loop()

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
            )

        owns = sockets is None
        if sockets is None:
            try:
                sockets = [config.bind_socket()]  # logs "Uvicorn running on ..."
            except SystemExit:
                await self.lifespan.shutdown()
                raise
        for sock in sockets:
            sock.listen(config.backlog)  # bind_socket() binds but does not listen; listening twice is harmless
        self.servers = [GreedyAcceptor(loop, sock, create_protocol, ACCEPT_BATCH, owns) for sock in sockets]  # type: ignore[list-item]
        self.started = True


# uvicorn's worker Process, serving with GatewayServer (`kairos serve --workers N`). At module
# level so that a spawned worker, which unpickles it by qualified name, finds it here.
try:
    from uvicorn.supervisors.multiprocess import Process as _UvicornProcess

    class GatewayProcess(_UvicornProcess):
        @property
        def server(self) -> uvicorn.Server:
            if self._server is None:
                self._server = GatewayServer(config=self.config)
            return self._server

except ImportError:  # pragma: no cover - an older uvicorn without the Process class
    GatewayProcess = None  # type: ignore[assignment,misc]
