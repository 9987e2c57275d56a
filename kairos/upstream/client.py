"""The one upstream HTTP client of a gateway process.

httpx's default transport (httpcore) was measured at ~1% of nginx's throughput
here (its pool does O(N^2) work per request) and aiohttp's client capped the
gateway well below what the server side could do, so connections are held by
`pool.UpstreamPool` (HTTP/1.1 on `connection.Connection`), written for a proxy:
no cookie jar (a `Set-Cookie` for client A must never ride on client B's
request), no automatic headers or decompression, no hidden retries.

Two ways in:

* `UpstreamClient.request()` for the proxy's hot path (no `httpx.Request` /
  `httpx.Response` objects built per request; docs/performance.md has the
  measurement that kept it);
* `UpstreamClient.http`, an `httpx.AsyncClient` over `UpstreamTransport`, for
  everything that prefers httpx's API (health probes, JWKS fetches).

Both raise or map the same `UpstreamError` kinds.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Any

import httpx

from kairos.upstream.connection import MAX_HEADER_BYTES, MAX_HEADERS, Headers, Response
from kairos.upstream.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
)
from kairos.upstream.pool import DEFAULT_LIMITS, PoolLimits, UpstreamPool, pool_limits
from kairos.upstream.transport import UpstreamTransport

__all__ = [
    "PoolLimits",
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
    """Owns the connection pool; started by the app's lifespan, or lazily on first use.

    `limits` apply to requests that name none (the httpx API, a route without its
    own `connection_pool`); `configure()` changes them and the head bounds on reload."""

    def __init__(
        self,
        *,
        limits: PoolLimits = DEFAULT_LIMITS,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.limits = limits
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._pool: UpstreamPool | None = None
        self.http = httpx.AsyncClient(transport=UpstreamTransport(self), follow_redirects=False, trust_env=False)

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def pool(self) -> UpstreamPool | None:
        return self._pool

    async def start(self) -> None:
        if self._pool is None:
            self._pool = UpstreamPool(
                limits=self.limits, max_header_bytes=self.max_header_bytes, max_headers=self.max_headers
            )

    def configure(self, limits: PoolLimits, max_header_bytes: int, max_headers: int) -> None:
        self.limits = limits
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        pool = self._pool
        if pool is not None:
            pool.limits = limits
            pool.max_header_bytes = max_header_bytes
            pool.max_headers = max_headers

    def apply(self, config: Any) -> None:
        """Take a GatewayConfig's `connection_pool` defaults and `server.max_upstream_*` bounds."""
        self.configure(
            pool_limits(config.connection_pool), config.server.max_upstream_header_bytes,
            config.server.max_upstream_headers,
        )

    def retain(self, origins: set[tuple[str, str, int]]) -> None:
        """Close idle connections to every origin not in `origins` (after a reload)."""
        if self._pool is not None:
            self._pool.retain(origins)

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
        limits: PoolLimits | None = None,
        upgrade: bool = False,
        pool_timeout: float | None = None,
    ) -> Response:
        """Send one request; the response's body is still unread (stream it, then release())."""
        pool = self._pool
        if pool is None:
            # Mounted in a host app that never ran our lifespan: start on first use.
            await self.start()
            pool = self._pool
            assert pool is not None
        return await pool.request(
            scheme, host, port, method, target, headers, body, connect_timeout, limits, upgrade, pool_timeout
        )
