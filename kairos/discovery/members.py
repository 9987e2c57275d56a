"""A route's members when some come from DNS: what to resolve, and how an answer
becomes the cluster's backends.

A `DiscoveredCluster` is compiled with the route: its static members (IP
literals, `localhost`) and its `Target`s (a backend host to resolve, or the
route's SRV name). Given the last good answer of each target, `apply()` builds
the member list -- static ones first, then every discovered address with the
target's port and weight (SRV: the record's) -- and, when it differs from the
current one, swaps it into the cluster. Addresses that stay keep their Backend
object (in-flight count, health verdict, ejection, breaker); requests already
running keep the Backend they picked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kairos.config.models import BackendConfig
from kairos.discovery.config import DiscoveryConfig
from kairos.discovery.resolver import Endpoint
from kairos.upstream.breaker import CircuitBreaker, NoBreaker
from kairos.upstream.backend import Backend
from kairos.upstream.cluster import Cluster


def is_discoverable(host: str) -> bool:
    """True for a DNS name: not an IP literal and not `localhost` (RFC 6761)."""
    name = host.partition("://")[2].strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


@dataclass(frozen=True)
class Lookup:
    """One thing to ask DNS, shared by every route that asks the same (one loop each)."""

    kind: str  # "dns" (A/AAAA) or "dns_srv"
    name: str
    nameservers: tuple[str, ...] | None
    port: int
    timeout_ms: int
    refresh_ms: int
    respect_ttl: bool
    min_refresh_ms: int

    @classmethod
    def of(cls, config: DiscoveryConfig, name: str) -> Lookup:
        return cls(
            config.type, name, tuple(config.nameservers) if config.nameservers else None, config.port,
            config.timeout_ms, config.refresh_ms, config.respect_ttl, config.min_refresh_ms,
        )

    def discovery_config(self) -> DiscoveryConfig:
        return DiscoveryConfig(
            type="dns", nameservers=list(self.nameservers) if self.nameservers else None, port=self.port,
            timeout_ms=self.timeout_ms,
        )


@dataclass(frozen=True)
class Target:
    """A lookup and how its answer becomes backends of one route."""

    lookup: Lookup
    scheme: str
    port: int  # dns: the configured port; dns_srv: 0 (the records say)
    weight: int  # dns: the configured weight; dns_srv: 0 (the records say)
    health_check_path: str | None

    def backends(self, endpoints: Sequence[Endpoint]) -> list[tuple[BackendConfig, str]]:
        out = []
        for ep in endpoints:
            host = f"[{ep.ip}]" if ":" in ep.ip else ep.ip
            config = BackendConfig(
                host=f"{self.scheme}://{host}",
                port=self.port or ep.port,
                weight=self.weight or ep.weight,
                health_check_path=self.health_check_path,
            )
            out.append((config, ep.hostname))
        return out


Member = tuple[Backend, int, "CircuitBreaker | NoBreaker"]


class DiscoveredCluster:
    """A route's cluster whose members are (partly) discovered.

    `backend_for(config, hostname)` returns the runtime's Backend for an address (creating
    it if new); `breaker_for(backend)` its breaker as this route uses it."""

    def __init__(
        self,
        route: str,
        cluster: Cluster,
        static: Sequence[BackendConfig],
        targets: Sequence[Target],
        backend_for: Callable[[BackendConfig, str | None], Backend],
        breaker_for: Callable[[Backend], CircuitBreaker | NoBreaker],
    ) -> None:
        self.route = route
        self.cluster = cluster
        self.static = tuple(static)
        self.targets = tuple(targets)
        self.backend_for = backend_for
        self.breaker_for = breaker_for

    @property
    def lookups(self) -> set[Lookup]:
        return {t.lookup for t in self.targets}

    def apply(self, answers: Mapping[Lookup, Sequence[Endpoint]]) -> tuple[list[str], list[str]] | None:
        """Make the cluster's members match `answers` (targets without one contribute nothing yet).

        Returns (added, removed) addresses, or None when nothing changed."""
        wanted: list[tuple[BackendConfig, str | None]] = [(c, None) for c in self.static]
        for target in self.targets:
            endpoints = answers.get(target.lookup)
            if endpoints:
                wanted.extend(target.backends(endpoints))
        seen: set[str] = set()
        unique = []
        for config, hostname in wanted:
            if config.address not in seen:  # one address is one member, whichever target found it
                seen.add(config.address)
                unique.append((config, hostname))
        cluster = self.cluster
        current = [(b.address, w) for b, w in zip(cluster.backends, cluster.weights)]
        if current == [(c.address, c.weight) for c, _ in unique]:
            return None
        backends = [self.backend_for(config, hostname) for config, hostname in unique]
        weights = [config.weight for config, _ in unique]
        breakers = [self.breaker_for(b) for b in backends]
        before = {b.address for b in cluster.backends}
        cluster.replace_members(backends, weights, breakers)
        return sorted(seen - before), sorted(before - seen)


def split_backends(
    backends: Sequence[BackendConfig], config: DiscoveryConfig
) -> tuple[list[BackendConfig], list[Target]]:
    """A route's configured backends as static members and DNS targets (`type: dns`)."""
    static: list[BackendConfig] = []
    targets: list[Target] = []
    for bc in backends:
        if not is_discoverable(bc.host):
            static.append(bc)
            continue
        scheme, _, host = bc.host.partition("://")  # ws:// stays ws:// (Backend maps it for the handshake)
        targets.append(Target(Lookup.of(config, host.rstrip(".")), scheme, bc.port, bc.weight, bc.health_check_path))
    return static, targets


def srv_target(config: DiscoveryConfig, health_check_path: str | None) -> Target:
    assert config.name is not None
    return Target(Lookup.of(config, config.name), config.scheme, 0, 0, health_check_path)
