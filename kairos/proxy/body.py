"""The client's request body: streamed as it arrives, or buffered (up to a limit) for retries."""

from __future__ import annotations

from collections.abc import AsyncIterator

from kairos.types import Receive


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


async def request_body(receive: Receive) -> AsyncIterator[bytes]:
    """The client's body, chunk by chunk as it arrives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class StreamedBody:
    """A request body larger than `retry_buffer_bytes`: not replayable. The part read
    so far, then the rest as it arrives. `started` tells whether any of it was handed
    to a connection (if not, a request refused at connect time can still be sent
    elsewhere with this same body)."""

    __slots__ = ("head", "rest", "started")

    def __init__(self, head: list[bytes], rest: AsyncIterator[bytes]) -> None:
        self.head = head
        self.rest = rest
        self.started = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        head, self.head = self.head, []
        for chunk in head:
            yield chunk
        async for chunk in self.rest:
            yield chunk


async def buffer_body(receive: Receive, limit: int) -> bytes | StreamedBody:
    """Read the request body into memory for replay, up to `limit` bytes; beyond that,
    return a StreamedBody that forwards the rest as it streams (not replayable)."""
    chunks: list[bytes] = []
    size = 0
    stream = request_body(receive)
    async for chunk in stream:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return StreamedBody(chunks, stream)
    return b"".join(chunks)
