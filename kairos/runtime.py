"""Compile a config into a Runtime: router, routes with their layer chains, clusters and backends.

One immutable `Runtime` serves requests; a reload compiles a complete new one
and the gateway swaps the reference in one assignment. A request reads the
reference once, so it finishes on the config it started with. Backends present
in both configs keep their object (and with it their live state: in-flight
counts, health, breaker).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from kairos.clientip import ClientIdentity
from kairos.config.models import BackendConfig, CircuitBreakerConfig, GatewayConfig, HealthCheckConfig, RouterConfig
from kairos.deps import LayerDeps
from kairos.discovery.members import DiscoveredCluster, split_backends, srv_target
from kairos.layers import build_chain
from kairos.middleware.security_headers import compile_for_route
from kairos.observability.logging import log_event
from kairos.route import CompiledRoute
from kairos.routing import Router
from kairos.upstream.backend import Backend
from kairos.upstream.balancer import make_balancer
from kairos.upstream.breaker import NO_BREAKER, CircuitBreaker, NoBreaker
from kairos.upstream.cluster import Cluster
from kairos.upstream.health import HealthSpec
from kairos.upstream.outlier import OutlierDetector


class Runtime:
    """Everything compiled from one GatewayConfig."""

    def __init__(
        self,
        config: GatewayConfig,
        routes: list[CompiledRoute],
        backends: Mapping[str, Backend],
        health_checks: Mapping[str, HealthSpec] | None = None,
        discovered: list[DiscoveredCluster] | None = None,
    ) -> None:
        self.config = config
        self.routes = tuple(routes)
        self.backends = dict(backends)
        # Active health checks to run, by backend address (started by the Gateway).
        self.health_checks = dict(health_checks or {})
        self.router = Router((r.pattern, r.config.methods, r) for r in routes)
        self.identity = ClientIdentity(config.server.trusted_proxies)
        # Route clusters whose members DNS discovery maintains (kairos/discovery/).
        self.discovered = tuple(discovered or ())
        # The previous config's backends, so a discovered address that stays across a reload
        # keeps its object; an address discovery removes is dropped from here too (if it comes
        # back it starts fresh, with live gauges).
        self.carried: dict[str, Backend] = {}

    def members_changed(self) -> set[str]:
        """After DNS discovery changed some clusters: recompute the health checks and forget the
        backends no route uses any more; returns their addresses."""
        used: dict[str, Backend] = {}
        health_checks: dict[str, HealthSpec] = {}
        for route in self.routes:
            for backend in route.cluster.backends:
                used.setdefault(backend.address, backend)
            _collect_health_checks(route.config, list(route.cluster.backends), health_checks)
        gone = set(self.backends) - set(used)
        for address in gone:
            self.carried.pop(address, None)
        self.backends = used
        self.health_checks = health_checks
        return gone


def compile_runtime(config: GatewayConfig, deps: LayerDeps, previous: Runtime | None = None) -> Runtime:
    """Build a complete Runtime; raises on any problem, before anything is swapped.

    Calls downward only: clusters (upstream/), then each route's chain (layers.py)."""
    old = previous.backends if previous is not None else {}
    backends: dict[str, Backend] = {}
    configured: dict[str, CircuitBreakerConfig] = {}
    health_checks: dict[str, HealthSpec] = {}
    routes: list[CompiledRoute] = []
    discovered: list[tuple[RouterConfig, Cluster, list[BackendConfig], list]] = []
    for index, rc in enumerate(config.routers):
        configs = list(rc.backend_list)
        discovery = config.policy(rc, "discovery")
        targets: list = []
        if discovery is not None:
            # Names become members once DNS answers (kairos/discovery/); IPs and localhost now.
            if discovery.type == "dns_srv":
                targets = [srv_target(discovery, None)]
            else:
                configs, targets = split_backends(configs, discovery)
        members = [_member(backends, old, bc) for bc in configs]
        weights = [bc.weight for bc in configs]
        breakers = [_breaker_for(b, rc, config, configured) for b in members]
        outlier = OutlierDetector(rc.outlier_detection, members) if rc.outlier_detection is not None else None
        balancer = make_balancer(
            rc.load_balancing_strategy, members, weights, breakers=breakers, panic=rc.panic_mode, hash_on=rc.hash_on
        )
        cluster = Cluster(members, weights, balancer, breakers, outlier)
        routes.append(CompiledRoute(index, rc, config, cluster))
        _collect_health_checks(rc, members, health_checks)
        if targets:
            discovered.append((rc, cluster, configs, targets))
    for route in routes:
        # Security headers are applied by the global layer from this compiled set (docs/architecture.md).
        compile_for_route(route)
        route.pipeline = build_chain(route, deps)
    runtime = Runtime(config, routes, backends, health_checks)
    # Discovered members are looked up in (and added to) this runtime's backends, reusing the
    # previous runtime's objects: an address that stays across a reload keeps its state.
    runtime.carried = dict(old) if discovered else {}
    runtime.discovered = tuple(
        DiscoveredCluster(
            rc.external_path, cluster, static, targets,
            partial(_discovered_member, runtime),
            partial(_breaker_for, rc=rc, config=config, configured=configured),
        )
        for rc, cluster, static, targets in discovered
    )
    return runtime


def _member(backends: dict[str, Backend], old: Mapping[str, Backend], bc: BackendConfig,
            hostname: str | None = None) -> Backend:
    """The Backend for `bc`'s address: this config's, else the previous config's (its state kept), else new."""
    backend = backends.get(bc.address)
    if backend is None:
        backend = old.get(bc.address) or Backend(bc, hostname)
        backend.health_check_path = bc.health_check_path
        backends[bc.address] = backend
    elif backend.health_check_path is None:
        backend.health_check_path = bc.health_check_path
    return backend


def _discovered_member(runtime: Runtime, bc: BackendConfig, hostname: str | None) -> Backend:
    return _member(runtime.backends, runtime.carried, bc, hostname)


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
        configured[backend.address] = first = cfg
        if isinstance(backend.breaker, CircuitBreaker):
            backend.breaker.configure(cfg)  # a reload: same state, possibly new settings
    elif first != cfg:
        log_event(
            "circuit_breaker_config_conflict", 30, backend=backend.address, route=rc.external_path,
            detail="a backend has one breaker; the settings of the first route naming it apply",
        )
    if not isinstance(backend.breaker, CircuitBreaker):
        # A new backend (or one DNS discovery brought back as a new object after it left).
        backend.breaker = CircuitBreaker(backend.address, first)
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
