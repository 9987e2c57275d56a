"""The one upstream HTTP client of a gateway process.

httpx's default transport (httpcore) was measured at ~1% of nginx's throughput
here (its pool does O(N^2) work per request), so connections are held by one
`aiohttp.ClientSession`, configured for a proxy:

* no cookie jar: a `Set-Cookie` for client A must never ride on client B's request;
* no automatic decompression, no automatic `User-Agent`/`Accept`/`Accept-Encoding`/
  `Content-Type`: the upstream sees what the client sent;
* aiohttp's silent second attempt of an idempotent request on a stale keep-alive
  connection is switched off: retries are the route's decision, never the client's;
* keep-alive idle expiry (4 s) below uvicorn's 5 s, so a pooled connection is not
  reused just as the upstream closes it.

Two ways in: `UpstreamClient.request()` for the proxy's hot path (no
`httpx.Request`/`httpx.Response` objects built per request), and `client.http`, an
`httpx.AsyncClient` over `UpstreamTransport`, for everything that prefers httpx's
API (health probes, JWKS fetches). Both raise the same `UpstreamError` kinds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import aiohttp
import httpx
from yarl import URL

KEEPALIVE_EXPIRY_S = 4.0
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamError(Exception):
    """A transport failure; `kind` is one of connect, connect_timeout, timeout, reset."""

    kind = "upstream"
    # True when the request provably never reached the upstream (safe to retry any method).
    never_sent = False


class UpstreamConnectError(UpstreamError):
    kind = "connect"
    never_sent = True


class UpstreamConnectTimeout(UpstreamError):
    kind = "connect_timeout"
    never_sent = True


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamReset(UpstreamError):
    """Reset or closed after the request was (maybe) sent, or the response was cut short."""

    kind = "reset"


def translate(exc: BaseException) -> UpstreamError:
    """Map an aiohttp/asyncio failure onto our kinds (a refused connection is never a 'timeout')."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamConnectTimeout(f"connect timed out: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"connection failed: {exc.os_error.strerror or exc.os_error}")
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("upstream timed out")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamReset("upstream closed the connection before answering")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamReset("upstream response was cut short")
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError)):
        return UpstreamReset(f"connection reset: {exc}")
    return UpstreamReset(f"upstream failure: {exc.__class__.__name__}: {exc}")


class UpstreamClient:
    """Owns the connection pool; started by the app's lifespan, or lazily on first use."""

    def __init__(self, *, max_connections: int = 0, keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry_s = keepalive_expiry_s
        self._session: aiohttp.ClientSession | None = None
        self._starting: asyncio.Lock | None = None
        self.http = httpx.AsyncClient(transport=UpstreamTransport(self), follow_redirects=False, trust_env=False)

    @property
    def started(self) -> bool:
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        if self.started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.started:
                return
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry_s,
                ttl_dns_cache=10,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
                trust_env=False,
            )
            # aiohttp (3.9+) repeats an idempotent request once, unasked, when a reused
            # keep-alive connection turns out closed. A route without `retry` must reach the
            # upstream exactly once, so that hidden retry is off; retries are ours to make.
            session._retry_connection = False
            self._session = session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request(
        self,
        method: str,
        url: URL | str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | bytes | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request, return the response with its body still unread (stream it, then release)."""
        session = self._session
        if session is None or session.closed:
            await self.start()
            session = self._session
            assert session is not None
        if isinstance(url, str):
            url = URL(url, encoded=True)
        try:
            return await session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout if timeout is not None else aiohttp.helpers.sentinel,
                compress=None,
                chunked=None,
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise translate(exc) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise httpx.ReadError(str(translate(exc))) from exc

    async def aclose(self) -> None:
        self._response.release()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """httpx's transport API over the gateway's aiohttp pool."""

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        body = await request.aread()  # probes and key fetches: small bodies, if any
        try:
            response = await self._client.request(
                request.method, URL(str(request.url), encoded=True), headers, body or None, timeout
            )
        except UpstreamConnectTimeout as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except UpstreamConnectError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except UpstreamTimeout as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        except UpstreamError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()
