"""Relay one established WebSocket connection between the client (ASGI) and the upstream (websockets).

Two pumps, one per direction, each awaiting its write before reading the next
message: a side that stops reading stops the other side's reads (uvicorn pauses
the client's socket until the app receives; the websockets client pauses the
upstream's socket once MAX_QUEUE frames wait), so memory per connection stays
bounded whatever either peer does. The first pump to end (a close, a drop, an
oversized message), the idle watchdog or a stop request (reload, shutdown)
decides how both sides are closed.

Ping/pong is not relayed: ASGI does not expose it, and each hop keeps its own
keepalive (uvicorn's ws_ping_interval towards the client, the websockets
client's ping_interval towards the upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from kairos.types import Receive, Send

# Close codes a peer may report but that must never be sent in a close frame (RFC 6455 7.4.1):
# "no status" and "abnormal closure" mean the peer vanished (uvicorn reports a dropped client
# as 1005), so the other side hears 1001 going away; a TLS failure is the gateway's 1011.
NOT_ON_THE_WIRE = {1005: 1001, 1006: 1001, 1015: 1011}


def wire_code(code: int) -> int:
    return NOT_ON_THE_WIRE.get(code, code)


class Ending:
    """How a relay ends: what each side is told (None: it already left) and who closed."""

    __slots__ = ("to_client", "to_upstream", "closed_by", "code", "reason")

    def __init__(
        self,
        closed_by: str,
        code: int,
        reason: str = "",
        to_client: tuple[int, str] | None = None,
        to_upstream: tuple[int, str] | None = None,
    ) -> None:
        self.closed_by = closed_by  # client, upstream or gateway
        self.code = code  # the close code as reported by the side that closed (or the gateway's)
        self.reason = reason
        self.to_client = to_client
        self.to_upstream = to_upstream


class Session:
    """One relayed connection: its counters (for the log line) and its stop switch."""

    __slots__ = (
        "route",
        "started",
        "last_activity",
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "ending",
        "stopping",
        "_stop",
        "done",
    )

    def __init__(self, route: str) -> None:
        self.route = route
        self.started = time.monotonic()
        self.last_activity = self.started
        self.frames_in = 0  # client -> upstream messages
        self.frames_out = 0  # upstream -> client messages
        self.bytes_in = 0
        self.bytes_out = 0
        self.ending: Ending | None = None
        self.stopping: tuple[int, str] | None = None
        self._stop = asyncio.Event()
        self.done = asyncio.Event()

    def stop(self, code: int = 1001, reason: str = "going away") -> None:
        """Close both sides with `code` (a reload that removed the route, a shutdown)."""
        if self.stopping is None:
            self.stopping = (code, reason)
            self._stop.set()


def _size(data: str | bytes) -> int:
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8"))
    return len(data)


class Relay:
    """Runs one connection until either side closes; then closes the other."""

    def __init__(
        self,
        session: Session,
        receive: Receive,
        send: Send,
        upstream: ClientConnection,
        max_message_bytes: int,
        idle_timeout_s: float | None,
        close_timeout_s: float,
        counters: tuple[Any, Any, Any, Any],
    ) -> None:
        self.session = session
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.max_bytes = max_message_bytes
        self.idle_s = idle_timeout_s
        self.close_timeout_s = close_timeout_s
        # Cached metric children: messages in, bytes in, messages out, bytes out.
        self.counters = counters

    async def run(self) -> Ending:
        session = self.session
        pumps = [asyncio.ensure_future(self.client_to_upstream()), asyncio.ensure_future(self.upstream_to_client())]
        watchers = [asyncio.ensure_future(self.stopped())]
        if self.idle_s:
            watchers.append(asyncio.ensure_future(self.idle()))
        tasks = pumps + watchers
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
        ending = None
        for task in tasks:  # pumps first: a close that raced a stop request is reported as the close
            if task in done and not task.cancelled() and task.exception() is None:
                ending = task.result()
                break
        if ending is None:
            ending = Ending("gateway", 1011, "relay failed", (1011, "gateway error"), (1011, "gateway error"))
        session.ending = ending
        await self.close(ending)
        return ending

    # ------------------------------------------------------------------ pumps
    async def client_to_upstream(self) -> Ending:
        receive = self.receive
        upstream = self.upstream
        session = self.session
        limit = self.max_bytes
        messages, nbytes = self.counters[0], self.counters[1]
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text") or ""
                size = _size(data)
                if size > limit:
                    return Ending(
                        "gateway", 1009, f"client message of {size} bytes over {limit}",
                        to_client=(1009, "message too big"), to_upstream=(1001, "client closed"),
                    )
                session.last_activity = time.monotonic()
                try:
                    await upstream.send(data)
                except ConnectionClosed as exc:
                    return self.upstream_closed(exc)
                session.frames_in += 1
                session.bytes_in += size
                messages.inc()
                nbytes.inc(size)
            elif kind == "websocket.disconnect":
                code = message.get("code") or 1005
                reason = message.get("reason") or ""
                return Ending("client", code, reason, to_upstream=(wire_code(code), reason))

    async def upstream_to_client(self) -> Ending:
        send = self.send
        upstream = self.upstream
        session = self.session
        messages, nbytes = self.counters[2], self.counters[3]
        while True:
            try:
                data = await upstream.recv()
            except ConnectionClosed as exc:
                return self.upstream_closed(exc)
            session.last_activity = time.monotonic()
            message = {"type": "websocket.send", "bytes": data} if isinstance(data, bytes) else {
                "type": "websocket.send", "text": data}
            try:
                await send(message)
            except Exception:  # uvicorn raises ClientDisconnected (an OSError) once the client is gone
                return Ending("client", 1006, "", to_upstream=(1001, "client went away"))
            size = _size(data)
            session.frames_out += 1
            session.bytes_out += size
            messages.inc()
            nbytes.inc(size)

    def upstream_closed(self, exc: ConnectionClosed) -> Ending:
        sent, rcvd = exc.sent, exc.rcvd
        if sent is not None and sent.code == 1009 and not exc.rcvd_then_sent:
            # The websockets client refused an upstream message over max_message_bytes.
            return Ending("gateway", 1009, "upstream message too big", to_client=(1011, "upstream message too big"))
        if rcvd is None:
            return Ending("upstream", 1006, "", to_client=(1001, "upstream went away"))
        return Ending("upstream", rcvd.code, rcvd.reason, to_client=(wire_code(rcvd.code), rcvd.reason))

    # ------------------------------------------------------------------ watchers
    async def stopped(self) -> Ending:
        await self.session._stop.wait()
        code, reason = self.session.stopping or (1001, "going away")
        return Ending("gateway", code, reason, to_client=(code, reason), to_upstream=(code, reason))

    async def idle(self) -> Ending:
        assert self.idle_s
        session = self.session
        while True:
            left = session.last_activity + self.idle_s - time.monotonic()
            if left <= 0:
                return Ending("gateway", 1001, "idle timeout", (1001, "idle timeout"), (1001, "idle timeout"))
            await asyncio.sleep(left)

    # ------------------------------------------------------------------ closing
    async def close(self, ending: Ending) -> None:
        """Tell each side what the ending says, within close_timeout (a peer that does not read
        cannot be waited for forever)."""

        async def to_client(code: int, reason: str) -> None:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})

        jobs = []
        if ending.to_client is not None:
            jobs.append(to_client(*ending.to_client))
        if ending.to_upstream is not None:
            jobs.append(self.upstream.close(*ending.to_upstream))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout_s):
                await asyncio.gather(*jobs, return_exceptions=True)
        # Whatever happened above, the upstream socket is not left open.
        if self.upstream.state is not State.CLOSED:
            self.upstream.transport.abort()
