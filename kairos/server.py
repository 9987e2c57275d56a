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

RequestHeadProtocol is uvicorn's httptools protocol with the request-head limits
enforced while the head is read: a deadline (`server.request_header_timeout_ms`,
nginx's `client_header_timeout`; uvicorn has a keep-alive timeout but none for a
head that starts and then stalls, so one byte every few seconds holds a
connection forever: slowloris) and the byte and count caps (`server.max_header_bytes`,
`server.max_headers`; uvicorn would otherwise hold a head of any size in memory
before the app could refuse it).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable

from http import HTTPStatus

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kairos.config.models import ServerConfig
from kairos.errors import STATUS, error_body

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


# After refusing an oversized head, how long what the client still sends is read and dropped.
LINGER_S = 2.0


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop reading a head beyond the limits."""


def _server_settings_of(app: object) -> Callable[[], ServerConfig]:
    """Where the head limits are read: the served gateway's current config (a reload changes them)."""
    for _ in range(4):  # the app may sit inside uvicorn's own wrappers (`.app`)
        gateway = getattr(getattr(app, "state", None), "gateway", None)
        if gateway is not None:
            return lambda: gateway.runtime.config.server
        app = getattr(app, "app", None)
    defaults = ServerConfig()
    return lambda: defaults


class RequestHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, enforcing the request-head limits while the head is read.

    Deadline: the clock starts when the connection is made (a client that connects and
    sends nothing is cut too) and again at the first byte of each later request; it stops
    when the head is complete. Between requests uvicorn's own keep-alive timeout applies,
    and a slow body is the route's timeout's business. As nginx does, nothing is answered:
    the connection is closed.

    Size: the head is counted as it arrives; at twice `server.max_header_bytes` (+ 8 KiB
    for the request line and separators) it is refused at once with the gateway's JSON 414
    (the target) or 431, and the connection closed after a lingering read, before the rest
    is held in memory. A head only a little over the limits (or with too many headers) is
    read whole and refused by HeaderLimits in the app, as under any other server. Headers
    are not counted one by one here: an `on_header` override cost ~0.3 µs per header.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.server_settings = _server_settings_of(self.app)
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_open = False  # between on_message_begin and on_headers_complete
        self.head_serial = 0  # which request's head (one per on_message_begin)
        self.head_bytes = 0  # target bytes parsed
        self.max_head_bytes = self.max_wire_bytes = 0
        self.head_wire_bytes = 0  # bytes received while the head is open
        self.head_refused: tuple[str, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_clock()

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        settings = self.server_settings()
        self.head_bytes = self.head_wire_bytes = 0
        self.head_open = True
        self.head_serial += 1
        self.max_head_bytes = settings.max_header_bytes
        # Heads a little over the limits are read whole and refused by HeaderLimits in the app
        # (with the security headers and request id of any other answer); this cap is for
        # heads that would otherwise grow without end.
        self.max_wire_bytes = 2 * self.max_head_bytes + 8192 if self.max_head_bytes else 0
        if self.head_timer is None:
            self._start_head_clock()

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.max_wire_bytes and self.head_bytes > self.max_wire_bytes:
            self._refuse("uri_too_long", f"the request target is over {self.max_head_bytes} bytes")
        HttpToolsProtocol.on_url(self, url)

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        self.head_open = False
        HttpToolsProtocol.on_headers_complete(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _refuse(self, kind: str, message: str) -> None:
        # llhttp turns the exception into HttpParserCallbackError, which uvicorn answers
        # with send_400_response: that is where the gateway's own answer is written.
        self.head_refused = (kind, message)
        raise HeadTooLarge(message)

    def send_400_response(self, msg: str) -> None:
        if self.head_refused is None:
            super().send_400_response(msg)
            return
        kind, message = self.head_refused
        body = error_body(kind, message, "")
        content = [b"HTTP/1.1 %d %s\r\n" % (STATUS[kind], HTTPStatus(STATUS[kind]).phrase.encode())]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.append(b"content-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\n")
        content.append(b"content-length: %d\r\n\r\n" % len(body))
        content.append(body)
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            # nginx's lingering close: the client is still sending its head; closing now would
            # answer that with a reset, which destroys our answer in its receive buffer. Read
            # and drop for a moment instead (data_received), then close.
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.head_refused is not None:
            return  # lingering after a refused head: what the client still sends is dropped
        head = self.head_serial if self.head_open else -1
        HttpToolsProtocol.data_received(self, data)
        if head == self.head_serial and self.head_open and self.head_refused is None:
            # httptools keeps a header line to itself until the line ends (on_header comes
            # after), so a head that never ends is counted here, on the wire: a read that
            # neither began nor ended the head was all head.
            self.head_wire_bytes += len(data)
            if self.max_wire_bytes and self.head_wire_bytes > self.max_wire_bytes:
                self.head_refused = ("header_too_large", f"request head is over {self.max_head_bytes} bytes")
                self.send_400_response("")

    def _start_head_clock(self) -> None:
        timeout = self.server_settings().request_header_timeout_ms / 1000
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
