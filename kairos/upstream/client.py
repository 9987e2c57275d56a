"""The one upstream HTTP client of a gateway process.

httpx's default transport (httpcore) was measured at ~1% of nginx's throughput
here (its pool does O(N^2) work per request) and aiohttp's client capped the
gateway well below what the server side could do, so connections are held by
`h1.UpstreamPool`, a lean HTTP/1.1 pool written for a proxy: no cookie jar (a
`Set-Cookie` for client A must never ride on client B's request), no automatic
headers or decompression, no hidden retries.

Two ways in:

* `UpstreamClient.request()` for the proxy's hot path (no `httpx.Request` /
  `httpx.Response` objects built per request);
* `UpstreamClient.http`, an `httpx.AsyncClient` over `UpstreamTransport`, for
  everything that prefers httpx's API (health probes, JWKS fetches).

Both raise or map the same `UpstreamError` kinds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import httpx

from kairos.upstream.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
)
from kairos.upstream.connection import Headers, Response
from kairos.upstream.pool import UpstreamPool
from kairos.upstream.transport import UpstreamTransport

KEEPALIVE_EXPIRY_S = 4.0

__all__ = [
    "KEEPALIVE_EXPIRY_S",
    "Response",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamReset",
    "UpstreamTimeout",
    "UpstreamTransport",
]


class UpstreamClient:
    """Owns the connection pool; started by the app's lifespan, or lazily on first use."""

    def __init__(self, *, keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S) -> None:
        self.keepalive_expiry_s = keepalive_expiry_s
        self._pool: UpstreamPool | None = None
        self.http = httpx.AsyncClient(transport=UpstreamTransport(self), follow_redirects=False, trust_env=False)

    @property
    def started(self) -> bool:
        return self._pool is not None

    async def start(self) -> None:
        if self._pool is None:
            self._pool = UpstreamPool(self.keepalive_expiry_s)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

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
    ) -> Response:
        """Send one request; the response's body is still unread (stream it, then release())."""
        pool = self._pool
        if pool is None:
            # Mounted in a host app that never ran our lifespan: start on first use.
            await self.start()
            pool = self._pool
            assert pool is not None
        return await pool.request(scheme, host, port, method, target, headers, body, connect_timeout)
