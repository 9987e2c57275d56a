"""A real WebSocket upstream (the `websockets` library) in a background thread, for the relay tests.

    up = WsUpstream().start()         # up.port, up.backend() -> {"host": "ws://127.0.0.1", "port": ...}
    up.handshakes[-1]                 # Handshake(path, headers, subprotocols) of each upgrade it saw
    up.stop()

Paths (after the gateway's internal_path rendering):
    /echo...            echoes every message back (text as text, binary as binary)
    /info...            first sends a JSON text message: path, query, headers, subprotocol; then echoes
    /refuse/<status>    answers the handshake with <status> and body "refused <status>"
    /slow               waits 1 s before answering the handshake, then echoes
    /close/<code>       closes with <code> and reason "bye" after the first message
    /flood/<n>/<size>   sends n binary messages of size bytes, as fast as the reader takes them
    /big/<size>         sends one binary message of size bytes after the first message
    /hold               never sends anything; records the client's close code
Subprotocols: "chat.v2" and "chat.v1" are supported (the first offered one wins).
Every connection's close code as the upstream saw it lands in `up.closes` (path, code, reason).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

SUPPORTED = ("chat.v2", "chat.v1")


@dataclass
class Handshake:
    path: str
    headers: list[tuple[str, str]]
    subprotocols: list[str]

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class WsUpstream:
    def __init__(self, name: str = "ws-upstream", ssl_context: Any = None) -> None:
        self.name = name
        self.ssl_context = ssl_context  # serve wss:// with it
        self.port = 0
        self.handshakes: list[Handshake] = []
        self.closes: list[tuple[str, int | None, str]] = []
        self.sent_bytes = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WsUpstream:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("websocket upstream did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def backend(self, scheme: str = "ws") -> dict[str, Any]:
        return {"host": f"{scheme}://127.0.0.1", "port": self.port}

    def wait_closes(self, n: int, timeout: float = 10.0) -> list[tuple[str, int | None, str]]:
        deadline = time.monotonic() + timeout
        while len(self.closes) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.closes)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request,
            select_subprotocol=self._select, compression=None, max_size=None, server_header=None,
            ssl=self.ssl_context,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    # ------------------------------------------------------------------ handshake
    async def _process_request(self, connection: ServerConnection, request: Any) -> Response | None:
        offered = []
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            offered.extend(p.strip() for p in value.split(","))
        self.handshakes.append(Handshake(request.path, list(request.headers.raw_items()), offered))
        path = request.path.partition("?")[0]
        if path == "/slow":
            await asyncio.sleep(1)
        if path.startswith("/refuse/"):
            status = int(path.rsplit("/", 1)[1])
            body = f"refused {status}".encode()
            headers = Headers([("Content-Type", "text/plain"), ("X-Refused", "yes"), ("Content-Length", str(len(body)))])
            return Response(status, HTTPStatus(status).phrase, headers, body)
        return None

    @staticmethod
    def _select(connection: ServerConnection, offered: Any) -> str | None:
        for p in offered:
            if p in SUPPORTED:
                return p
        return None

    # ------------------------------------------------------------------ behaviours
    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path.partition("?")[0]
        try:
            if path.startswith("/info"):
                hs = self.handshakes[-1]
                await ws.send(json.dumps({
                    "path": ws.request.path.partition("?")[0],
                    "query": ws.request.path.partition("?")[2],
                    "headers": hs.headers,
                    "subprotocol": ws.subprotocol,
                }))
                await self._echo(ws)
            elif path.startswith("/close/"):
                code = int(path.rsplit("/", 1)[1])
                await ws.recv()
                await ws.close(code, "bye")
            elif path.startswith("/flood/"):
                _, _, n, size = path.split("/")
                chunk = b"x" * int(size)
                for _ in range(int(n)):
                    await ws.send(chunk)
                    self.sent_bytes += len(chunk)
                await ws.wait_closed()
            elif path.startswith("/big/"):
                size = int(path.rsplit("/", 1)[1])
                await ws.recv()
                await ws.send(b"b" * size)
                await ws.wait_closed()
            elif path == "/hold":
                await ws.wait_closed()
            else:
                await self._echo(ws)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append((path, ws.close_code, ws.close_reason or ""))

    @staticmethod
    async def _echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)
