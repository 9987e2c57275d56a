"""The narrow handles layers are built with, instead of the Gateway.

`LayerDeps` is what a route layer's factory (kairos/layers.py) may use: the
upstream client, the edge state shared across reloads, a clock. `RuntimeSource`
is what the global layers (security headers, header limits, access log, the
catch-all endpoint) read once per request: something holding the current
compiled config. The Gateway is both, but nothing below kairos.gateway knows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from kairos.cache.stores import CacheStores
from kairos.clientip import ClientIdentity
from kairos.config.models import GatewayConfig
from kairos.edge import EdgeState
from kairos.tracing.tracers import Tracers
from kairos.types import ASGIApp
from kairos.upstream.client import UpstreamClient
from kairos.websocket.connections import Connections

# What a layer factory returns: given the next app in the chain, the layer around it
# (usually functools.partial(LayerClass, **settings), as Starlette's Middleware(cls, **kw)).
Wrap = Callable[[ASGIApp], ASGIApp]


class LayerDeps:
    """Handles shared by every route's layers; one per Gateway, the same across reloads."""

    __slots__ = ("upstream", "edge", "clock", "caches", "tracers", "websockets")

    def __init__(
        self,
        upstream: UpstreamClient,
        edge: EdgeState,
        clock: Callable[[], float] = time.monotonic,
        websockets: Connections | None = None,
    ) -> None:
        self.upstream = upstream  # .request() for forwarding, .http (an httpx.AsyncClient) for fetches
        self.edge = edge  # JWKS fetchers, verifiers, rate-limit counters, Redis pools
        self.clock = clock
        # Response cache stores (kept across reloads); Redis ones use the edge's shared pools.
        self.caches = CacheStores(lambda url: edge.redis_backend(url).client)
        self.tracers = Tracers()  # the OpenTelemetry tracer of the current `tracing` block, if enabled
        self.websockets = websockets if websockets is not None else Connections()  # open WebSockets, by route


class CompiledConfig(Protocol):
    """The parts of a Runtime the global layers read."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def identity(self) -> ClientIdentity: ...

    @property
    def router(self) -> Any: ...


class RuntimeSource(Protocol):
    """Holds the current compiled config; a reload replaces `runtime` in one assignment,
    so a request reads it once and finishes on the config it started with."""

    @property
    def runtime(self) -> CompiledConfig: ...
