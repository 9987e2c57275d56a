"""httpx's transport API over the gateway's pool, for any httpx user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from kairos.upstream.connection import Response
from kairos.upstream.errors import UpstreamConnectError, UpstreamConnectTimeout, UpstreamError


class Requester(Protocol):
    """What the transport needs of its owner (an `UpstreamClient`)."""

    async def request(self, *args: Any, **kwargs: Any) -> Response: ...

    async def aclose(self) -> None: ...


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._response.read():
                yield chunk
        except UpstreamError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        self._response.release()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """httpx's transport API over the gateway's pool."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.scheme
        port = url.port or (443 if scheme == "https" else 80)
        body = await request.aread()  # probes and key fetches: small bodies, if any
        headers = [(k.lower(), v) for k, v in request.headers.raw]
        if request.method not in ("GET", "HEAD") and not any(k == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        read_timeout = timeouts.get("read")
        try:
            async with asyncio.timeout(read_timeout):
                response = await self._client.request(
                    scheme, url.host, port, request.method, url.raw_path.decode("ascii"), headers,
                    body or None, timeouts.get("connect"),
                )
        except TimeoutError as exc:
            raise httpx.ReadTimeout("upstream timed out", request=request) from exc
        except UpstreamConnectTimeout as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except UpstreamConnectError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except UpstreamError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()
