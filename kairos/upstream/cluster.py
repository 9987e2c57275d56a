"""Backends and the cluster (a route's set of backends with its balancer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kairos.config.models import BackendConfig

if TYPE_CHECKING:
    from kairos.upstream.balancer import Balancer


class Backend:
    """One upstream server. Its live state (in-flight count, health) survives reloads:
    the runtime reuses the Backend object of an address present in both configs."""

    __slots__ = (
        "address", "scheme", "host", "connect_host", "port", "origin", "netloc", "host_header",
        "health_check_path", "in_flight", "healthy",
    )

    def __init__(self, config: BackendConfig) -> None:
        self.address = config.address
        scheme, _, host = config.host.partition("://")
        # WebSocket backends are reached over HTTP(S) for the handshake.
        self.scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
        self.host = host
        self.connect_host = host.strip("[]")  # an IPv6 literal is written [::1] in URLs only
        self.port = config.port
        default_port = 443 if self.scheme == "https" else 80
        self.netloc = host if self.port == default_port else f"{host}:{self.port}"
        self.origin = f"{self.scheme}://{self.netloc}"
        self.host_header = self.netloc.encode("idna" if not host.isascii() else "ascii")
        self.health_check_path = config.health_check_path
        self.in_flight = 0
        self.healthy = True

    def __repr__(self) -> str:
        return f"Backend({self.address})"


class Cluster:
    """A route's backends, their weights on this route, and the balancer that picks among them.

    The same address may stand in several routes (with different weights): the
    Backend object is shared, its weight belongs to the cluster."""

    __slots__ = ("backends", "weights", "balancer")

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int], balancer: Balancer) -> None:
        self.backends = tuple(backends)
        self.weights = tuple(weights)
        self.balancer = balancer
