"""Upstreams scripted byte for byte (a plain asyncio server on a real socket) and the
pool-side helpers, shared by the upstream client's tests (conformance, client, properties)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from kairos.upstream.client import UpstreamClient

Script = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Upstream:
    """A plain asyncio server; every connection runs `script`. Counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()  # set when a connection ended (EOF from the pool)
        self.port = 0

    async def __aenter__(self) -> Upstream:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.script(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()
                self.closed.set()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        return head


def replies(*answers: bytes | None, then_wait: bool = True) -> Script:
    """Answer the connection's requests in turn with these bytes (None: close instead)."""

    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await up.read_request(reader)
            if answer is None:
                return
            writer.write(answer)
            await writer.drain()
        if then_wait:
            await reader.read()  # keep the connection open until the pool closes it

    return script


def answer_forever(answer: bytes, after: asyncio.Event | None = None) -> Script:
    """Answer every request with `answer` (once `after` is set, when given)."""

    async def script(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await up.read_request(reader)
            if after is not None:
                await after.wait()
            writer.write(answer)
            await writer.drain()

    return script


async def read_body(response) -> bytes:
    """The rest of a response's body (the response is not released)."""
    body = b""
    while chunk := await response.read():
        body += chunk
    return body


@pytest.fixture
async def client():
    c = UpstreamClient()
    await c.start()
    yield c
    await c.aclose()
