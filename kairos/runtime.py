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

from kairos.clientip import ClientIdentity
from kairos.config.models import CircuitBreakerConfig, GatewayConfig, HealthCheckConfig, RouterConfig
from kairos.middleware.auth import claim_header_names
from kairos.routing import PathTemplate, Pattern, Router, parse_pattern
from kairos.types import ASGIApp
from kairos.observability.logging import log_event
from kairos.upstream.balancer import make_balancer
from kairos.upstream.breaker import NO_BREAKER, CircuitBreaker, NoBreaker
from kairos.upstream.cluster import Backend, Cluster
from kairos.upstream.health import HealthSpec
from kairos.upstream.outlier import OutlierDetector
from kairos.upstream.retry import RetryPolicy

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
        "connect_timeout_s",
        "read_timeout_s",
        "preserve_host",
        "strip_headers",
        "pipeline",
        "extras",
        "retry",
        "panic_mode",
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
        self.connect_timeout_s = root.policy(config, "connect_timeout_ms") / 1000
        self.read_timeout_s: float | None = (root.policy(config, "read_timeout_ms") / 1000) or None
        self.preserve_host = config.preserve_host
        # Request headers removed before forwarding (policy layers add to this at build time).
        # forward_claims header names are set only by the gateway: a client's copy is dropped
        # on every route (on a protected route, auth removes them before setting its own).
        self.strip_headers: frozenset[bytes] = frozenset() if config.auth_required else claim_header_names(root)
        # None: exactly one upstream attempt (kairos-rs behaviour without a `retry` block).
        self.retry = RetryPolicy(config.retry, self.name) if config.retry is not None else None
        self.panic_mode = config.panic_mode
        self.pipeline: ASGIApp | None = None
        # Per-feature compiled state (breakers, limiters, ...), keyed by feature name.
        self.extras: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"CompiledRoute({self.config.methods} {self.name})"


class Runtime:
    """Everything compiled from one GatewayConfig."""

    def __init__(
        self,
        config: GatewayConfig,
        routes: list[CompiledRoute],
        backends: Mapping[str, Backend],
        health_checks: Mapping[str, HealthSpec] | None = None,
    ) -> None:
        self.config = config
        self.routes = tuple(routes)
        self.backends = dict(backends)
        # Active health checks to run, by backend address (started by the Gateway).
        self.health_checks = dict(health_checks or {})
        self.router = Router((r.pattern, r.config.methods, r) for r in routes)
        self.identity = ClientIdentity(config.server.trusted_proxies)


def compile_runtime(config: GatewayConfig, gateway: Gateway, previous: Runtime | None = None) -> Runtime:
    """Build a complete Runtime; raises on any problem, before anything is swapped."""
    from kairos.proxy.forward import build_pipeline

    old = previous.backends if previous is not None else {}
    backends: dict[str, Backend] = {}
    configured: dict[str, CircuitBreakerConfig] = {}
    health_checks: dict[str, HealthSpec] = {}
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
        breakers = [_breaker_for(b, rc, config, configured) for b in members]
        outlier = OutlierDetector(rc.outlier_detection, members) if rc.outlier_detection is not None else None
        balancer = make_balancer(
            rc.load_balancing_strategy, members, weights, breakers=breakers, panic=rc.panic_mode, hash_on=rc.hash_on
        )
        cluster = Cluster(members, weights, balancer, breakers, outlier)
        routes.append(CompiledRoute(index, rc, config, cluster))
        _collect_health_checks(rc, members, health_checks)
    for route in routes:
        route.pipeline = build_pipeline(route, config, gateway)
    return Runtime(config, routes, backends, health_checks)


def _breaker_for(
    backend: Backend, rc: RouterConfig, config: GatewayConfig, configured: dict[str, CircuitBreakerConfig]
) -> CircuitBreaker | NoBreaker:
    """The backend's one breaker (kept across reloads), configured by the first route that names it.

    A route with `circuit_breaker.enabled: false` neither consults nor feeds it."""
    cfg = config.policy(rc, "circuit_breaker")
    if not cfg.enabled:
        return NO_BREAKER
    first = configured.get(backend.address)
    if first is None:
        configured[backend.address] = cfg
        if isinstance(backend.breaker, CircuitBreaker):
            backend.breaker.configure(cfg)  # a reload: same state, possibly new settings
        else:
            backend.breaker = CircuitBreaker(backend.address, cfg)
    elif first != cfg:
        log_event(
            "circuit_breaker_config_conflict", 30, backend=backend.address, route=rc.external_path,
            detail="a backend has one breaker; the settings of the first route naming it apply",
        )
    assert isinstance(backend.breaker, CircuitBreaker)
    return backend.breaker


def _collect_health_checks(rc: RouterConfig, members: list[Backend], out: dict[str, HealthSpec]) -> None:
    hc = rc.health_check
    for backend in members:
        if backend.address in out:
            continue  # first route naming a backend sets its probe
        path = backend.health_check_path or (hc.path if hc is not None else None)
        if path is None:
            continue
        out[backend.address] = HealthSpec(backend, path, hc if hc is not None else HealthCheckConfig())
