"""httpx's transport API over the gateway's pool, usable by any httpx user.

Complete as an `httpx.AsyncBaseTransport`: request bodies stream out (chunked
when no Content-Length is given), response bodies stream in, and failures map
onto httpx's exceptions: connect, read (per chunk, and until the response head)
and pool timeouts, a full queue (PoolTimeout), protocol errors. A write timeout
has no separate clock: a body the upstream stops reading ends in the read timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from kairos.upstream.connection import Response
from kairos.upstream.errors import (
    InvalidUpstreamRequest,
    RequestBodyFailed,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamTimeout,
)


class Requester(Protocol):
    """What the transport needs of its owner (an `UpstreamClient`)."""

    async def request(self, *args: Any, **kwargs: Any) -> Response: ...

    async def aclose(self) -> None: ...


# Most specific first: UpstreamProtocolError is a kind of reset, ConnectTimeout of connect error.
_HTTPX_ERRORS: tuple[tuple[type[UpstreamError], type[httpx.TransportError]], ...] = (
    (UpstreamConnectTimeout, httpx.ConnectTimeout),
    (UpstreamConnectError, httpx.ConnectError),
    (UpstreamTimeout, httpx.ReadTimeout),
    (UpstreamOverloaded, httpx.PoolTimeout),
    (InvalidUpstreamRequest, httpx.LocalProtocolError),
    (RequestBodyFailed, httpx.WriteError),
    (UpstreamProtocolError, httpx.RemoteProtocolError),
)


def _httpx_error(exc: UpstreamError, request: httpx.Request) -> httpx.TransportError:
    for ours, theirs in _HTTPX_ERRORS:
        if isinstance(exc, ours):
            return theirs(str(exc), request=request)
    return httpx.ReadError(str(exc), request=request)


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._response.read():
                yield chunk
        except UpstreamError as exc:
            raise _httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


async def _request_body(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


class UpstreamTransport(httpx.AsyncBaseTransport):
    """httpx's transport API over the gateway's pool."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        headers = [(k.lower(), v) for k, v in request.headers.raw]
        body: Any
        try:
            body = request.content or None  # bytes given up front
        except httpx.RequestNotRead:
            body = _request_body(request.stream)  # streamed: chunked unless a Content-Length is set
        upgrade = any(k == b"upgrade" for k, _ in headers)
        read_timeout = timeouts.get("read")
        try:
            async with asyncio.timeout(read_timeout):
                response = await self._client.request(
                    scheme, url.host, port, request.method, url.raw_path.decode("ascii"), headers,
                    body, timeouts.get("connect"), upgrade=upgrade, pool_timeout=timeouts.get("pool"),
                )
        except TimeoutError as exc:
            raise httpx.ReadTimeout("the upstream did not answer in time", request=request) from exc
        except UpstreamError as exc:
            raise _httpx_error(exc, request) from exc
        response.read_timeout = read_timeout
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()
