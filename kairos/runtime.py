"""The compiled config: router, routes with their pipelines, clusters and backends.

One immutable `Runtime` serves requests; a reload compiles a complete new one
and the gateway swaps the reference in one assignment. A request reads the
reference once, so it finishes on the config it started with. Backends present
in both configs keep their object (and with it their live state: in-flight
counts, health, breaker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from kairos.clientip import ClientIdentity
from kairos.config.models import GatewayConfig, RouterConfig
from kairos.middleware.auth import claim_header_names
from kairos.routing import PathTemplate, Pattern, Router, parse_pattern
from kairos.types import ASGIApp
from kairos.upstream.balancer import make_balancer
from kairos.upstream.cluster import Backend, Cluster

if TYPE_CHECKING:
    from kairos.app import Gateway


class CompiledRoute:
    """One router entry, with everything the request path needs precomputed."""

    __slots__ = (
        "index",
        "config",
        "pattern",
        "name",
        "template",
        "cluster",
        "timeout_s",
        "client_timeout",
        "preserve_host",
        "strip_headers",
        "pipeline",
        "extras",
    )

    def __init__(self, index: int, config: RouterConfig, root: GatewayConfig, cluster: Cluster) -> None:
        self.index = index
        self.config = config
        self.pattern: Pattern = parse_pattern(config.external_path)
        # The route's name in metrics and logs: its template, never the raw path.
        self.name = config.external_path
        self.template = PathTemplate(config.internal_path, self.pattern.param_names)
        self.cluster = cluster
        self.timeout_s = root.policy(config, "timeout_ms") / 1000
        self.client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=root.policy(config, "connect_timeout_ms") / 1000
        )
        self.preserve_host = config.preserve_host
        # Request headers removed before forwarding (policy layers add to this at build time).
        # forward_claims header names are set only by the gateway: a client's copy is dropped
        # on every route (on a protected route, auth removes them before setting its own).
        self.strip_headers: frozenset[bytes] = frozenset() if config.auth_required else claim_header_names(root)
        self.pipeline: ASGIApp | None = None
        # Per-feature compiled state (breakers, limiters, ...), keyed by feature name.
        self.extras: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"CompiledRoute({self.config.methods} {self.name})"


class Runtime:
    """Everything compiled from one GatewayConfig."""

    def __init__(self, config: GatewayConfig, routes: list[CompiledRoute], backends: Mapping[str, Backend]) -> None:
        self.config = config
        self.routes = tuple(routes)
        self.backends = dict(backends)
        self.router = Router((r.pattern, r.config.methods, r) for r in routes)
        self.identity = ClientIdentity(config.server.trusted_proxies)


def compile_runtime(config: GatewayConfig, gateway: Gateway, previous: Runtime | None = None) -> Runtime:
    """Build a complete Runtime; raises on any problem, before anything is swapped."""
    from kairos.pipeline import build_pipeline

    old = previous.backends if previous is not None else {}
    backends: dict[str, Backend] = {}
    routes: list[CompiledRoute] = []
    for index, rc in enumerate(config.routers):
        members: list[Backend] = []
        weights: list[int] = []
        for bc in rc.backend_list:
            backend = backends.get(bc.address)
            if backend is None:
                backend = old.get(bc.address) or Backend(bc)
                backend.health_check_path = bc.health_check_path
                backends[bc.address] = backend
            elif backend.health_check_path is None:
                backend.health_check_path = bc.health_check_path
            members.append(backend)
            weights.append(bc.weight)
        cluster = Cluster(members, weights, make_balancer(rc.load_balancing_strategy, members, weights))
        routes.append(CompiledRoute(index, rc, config, cluster))
    for route in routes:
        route.pipeline = build_pipeline(route, config, gateway)
    return Runtime(config, routes, backends)
