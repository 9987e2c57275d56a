"""DNS discovery against a real UDP DNS server on 127.0.0.1 (tests/dns_server.py), no gateway:
the resolver, how answers become a cluster's members, the background loops."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from dns_server import DnsServer
from kairos.config.models import BackendConfig, CircuitBreakerConfig, OutlierDetectionConfig
from kairos.discovery.config import DiscoveryConfig
from kairos.discovery.members import DiscoveredCluster, Lookup, is_discoverable, split_backends, srv_target
from kairos.discovery.resolver import DnsResolver, Endpoint, ResolutionError
from kairos.discovery.supervisor import DiscoverySupervisor
from kairos.upstream.balancer import make_balancer
from kairos.upstream.breaker import OPEN, CircuitBreaker
from kairos.upstream.backend import Backend
from kairos.upstream.cluster import Cluster
from kairos.upstream.outlier import OutlierDetector


@pytest.fixture(scope="module")
def dns():
    server = DnsServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean(dns):
    dns.records.clear()
    dns.fail = None
    dns.queries.clear()


def discovery(dns, **kw) -> DiscoveryConfig:
    return DiscoveryConfig(nameservers=["127.0.0.1"], port=dns.port, timeout_ms=300, **kw)


# ---------------------------------------------------------------------------- resolver
async def test_resolver_returns_every_a_and_aaaa_with_the_smallest_ttl(dns):
    dns.set("users.test", "A", ["127.0.0.2", "127.0.0.1"], ttl=30)
    dns.set("users.test", "AAAA", ["::1"], ttl=7)
    ips, ttl = await DnsResolver(discovery(dns)).addresses("users.test")
    assert ips == ["127.0.0.1", "127.0.0.2", "::1"] and ttl == 7


async def test_srv_takes_the_lowest_priority_group_with_its_ports_and_weights(dns):
    dns.set("_http._tcp.users.test", "SRV", ["10 5 8080 a.users.test.", "10 0 8081 b.users.test.",
                                              "20 9 9999 c.users.test."], ttl=9)
    dns.set("a.users.test", "A", ["127.0.0.3"])
    dns.set("b.users.test", "A", ["127.0.0.4"])
    dns.set("c.users.test", "A", ["127.0.0.5"])
    endpoints, ttl = await DnsResolver(discovery(dns)).srv("_http._tcp.users.test")
    assert endpoints == [Endpoint("127.0.0.3", 8080, 5, "a.users.test"), Endpoint("127.0.0.4", 8081, 1, "b.users.test")]
    assert ttl == 9
    assert ("c.users.test", "A") not in dns.queries  # the backup group is not even resolved


@pytest.mark.parametrize("fail,expected", [(None, "NXDOMAIN"), ("servfail", "no nameserver"), ("drop", "timed out")])
async def test_resolution_failures_are_one_error_with_the_reason(dns, fail, expected):
    dns.fail = fail
    with pytest.raises(ResolutionError, match=expected):
        await DnsResolver(discovery(dns)).addresses("missing.test")


def test_which_hosts_discovery_resolves():
    assert is_discoverable("http://users.svc")
    assert not is_discoverable("http://127.0.0.1") and not is_discoverable("http://[::1]")
    assert not is_discoverable("http://localhost") and not is_discoverable("http://api.localhost")


# ---------------------------------------------------------------------------- members
class Route:
    """A cluster compiled the way the runtime does it, with a registry of backends."""

    def __init__(self, configs: list[BackendConfig], config: DiscoveryConfig, strategy: str = "round_robin") -> None:
        self.registry: dict[str, Backend] = {}
        static, targets = split_backends(configs, config)
        members = [self.backend_for(c, None) for c in static]
        breakers = [self.breaker_for(b) for b in members]
        balancer = make_balancer(strategy, members, [c.weight for c in static], breakers=breakers)
        self.cluster = Cluster(members, [c.weight for c in static], balancer, breakers,
                               OutlierDetector(OutlierDetectionConfig(), members))
        self.discovered = DiscoveredCluster("/users", self.cluster, static, targets, self.backend_for, self.breaker_for)

    def backend_for(self, config: BackendConfig, hostname: str | None) -> Backend:
        backend = self.registry.get(config.address)
        if backend is None:
            backend = self.registry[config.address] = Backend(config, hostname)
        return backend

    def breaker_for(self, backend: Backend) -> CircuitBreaker:
        if backend.breaker is None:
            backend.breaker = CircuitBreaker(backend.address, CircuitBreakerConfig(failure_threshold=1), metrics=False)
        return backend.breaker

    def addresses(self) -> list[str]:
        return [b.address for b in self.cluster.backends]


def answer(*ips: str) -> list[Endpoint]:
    return [Endpoint(ip, 0, 0, "users.test") for ip in ips]


def test_each_address_becomes_a_backend_with_the_configured_port_and_weight():
    route = Route([BackendConfig(host="http://127.0.0.1", port=7000),
                   BackendConfig(host="http://users.test", port=8080, weight=3)], DiscoveryConfig())
    (lookup,) = route.discovered.lookups
    assert route.addresses() == ["http://127.0.0.1:7000"]  # the name contributes nothing until answered
    added, removed = route.discovered.apply({lookup: answer("10.0.0.1", "fd00::1")})
    assert added == ["http://10.0.0.1:8080", "http://[fd00::1]:8080"] and removed == []
    assert route.cluster.weights == (1, 3, 3)
    backend = route.cluster.backends[1]
    assert backend.connect_host == "10.0.0.1" and backend.host_header == b"users.test:8080"
    assert route.cluster.balancer.backends == route.cluster.backends  # the balancer sees the new set
    assert route.discovered.apply({lookup: answer("10.0.0.1", "fd00::1")}) is None  # same answer: no change


def test_addresses_that_stay_keep_their_state_and_in_flight_requests_their_backend():
    route = Route([BackendConfig(host="http://users.test", port=8080)], DiscoveryConfig())
    (lookup,) = route.discovered.lookups
    route.discovered.apply({lookup: answer("10.0.0.1", "10.0.0.2")})
    stays, goes = route.cluster.backends
    stays.in_flight = 2
    stays.breaker.failure(stays.breaker.acquire())  # open
    route.cluster.outlier.failure(stays)
    picked = goes  # a request running on the one that will leave
    goes.in_flight += 1
    added, removed = route.discovered.apply({lookup: answer("10.0.0.1", "10.0.0.3")})
    assert added == ["http://10.0.0.3:8080"] and removed == ["http://10.0.0.2:8080"]
    assert route.cluster.backends[0] is stays and stays.in_flight == 2 and stays.breaker.state == OPEN
    assert stays.od_failures == 1
    assert route.cluster.outlier.backends == route.cluster.backends
    picked.in_flight -= 1  # the in-flight request finishes on its own object
    assert picked.in_flight == 0
    # The breaker of the stayer still rules: only the new member is picked.
    balancer = route.cluster.balancer
    assert {balancer.backends[balancer.pick_index({"headers": []})].address for _ in range(4)} == {"http://10.0.0.3:8080"}


def test_srv_members_take_ports_and_weights_from_the_records():
    config = DiscoveryConfig(type="dns_srv", name="_http._tcp.users.test", scheme="https")
    route = Route([], config, strategy="weighted")
    route.discovered.targets = (srv_target(config, None),)
    lookup = Lookup.of(config, config.name)
    route.discovered.apply({lookup: [Endpoint("10.0.0.1", 8443, 5, "a.users.test"),
                                     Endpoint("10.0.0.2", 9443, 1, "b.users.test")]})
    assert route.addresses() == ["https://10.0.0.1:8443", "https://10.0.0.2:9443"]
    assert route.cluster.weights == (5, 1) and route.cluster.backends[1].host_header == b"b.users.test:9443"


# ---------------------------------------------------------------------------- loops
def sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(check, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_loops_follow_dns_and_keep_the_last_good_set_when_it_fails(dns):
    dns.set("loop.test", "A", ["10.0.0.1"])
    config = discovery(dns, refresh_ms=50)
    route = Route([BackendConfig(host="http://loop.test", port=80)], config)
    changes: list[tuple[list[str], list[str]]] = []
    supervisor = DiscoverySupervisor(lambda added, removed: changes.append((added, removed)))
    supervisor.sync([route.discovered])
    before = sample("kairos_discovery_membership_changes_total", {"route": "/users", "change": "added"})
    await supervisor.start(wait_s=2)
    try:
        assert route.addresses() == ["http://10.0.0.1:80"]  # start() waited for the first answer
        dns.set("loop.test", "A", ["10.0.0.1", "10.0.0.2"])
        await eventually(lambda: len(route.cluster.backends) == 2)
        assert changes[-1] == (["http://10.0.0.2:80"], [])
        errors = sample("kairos_discovery_resolutions_total", {"dns_name": "loop.test", "result": "error"})
        dns.fail = "servfail"
        await eventually(lambda: sample("kairos_discovery_resolutions_total",
                                        {"dns_name": "loop.test", "result": "error"}) >= errors + 2)
        assert len(route.cluster.backends) == 2  # last good set kept
        dns.fail = None
        dns.set("loop.test", "A", ["10.0.0.2"])
        await eventually(lambda: route.addresses() == ["http://10.0.0.2:80"])
        assert sample("kairos_discovery_membership_changes_total", {"route": "/users", "change": "added"}) == before + 2
        assert sample("kairos_discovery_endpoints", {"dns_name": "loop.test"}) == 1
    finally:
        await supervisor.aclose()


async def test_a_reload_starts_from_the_last_good_answer_and_stops_unused_loops(dns):
    dns.set("reload.test", "A", ["10.0.0.7"])
    config = discovery(dns, refresh_ms=60_000)
    first = Route([BackendConfig(host="http://reload.test", port=80)], config)
    supervisor = DiscoverySupervisor()
    supervisor.sync([first.discovered])
    await supervisor.start(wait_s=2)
    try:
        queries = len(dns.queries)
        second = Route([BackendConfig(host="http://reload.test", port=80)], config)
        supervisor.sync([second.discovered])  # same lookup: same loop, members at once
        assert second.addresses() == ["http://10.0.0.7:80"] and len(dns.queries) == queries
        supervisor.sync([])
        assert supervisor.tasks == {}
    finally:
        await supervisor.aclose()


async def test_respect_ttl_waits_for_the_record_ttl(dns):
    dns.set("ttl.test", "A", ["10.0.0.1"], ttl=1)
    config = discovery(dns, refresh_ms=60_000, respect_ttl=True, min_refresh_ms=0)
    route = Route([BackendConfig(host="http://ttl.test", port=80)], config)
    supervisor = DiscoverySupervisor()
    supervisor.sync([route.discovered])
    await supervisor.start(wait_s=2)
    try:
        dns.set("ttl.test", "A", ["10.0.0.9"], ttl=1)
        await eventually(lambda: route.addresses() == ["http://10.0.0.9:80"])  # after ~1 s, not 60
    finally:
        await supervisor.aclose()


async def test_through_the_runtime_a_reload_keeps_discovered_backends_and_a_returning_address_starts_fresh(dns):
    from kairos.config import parse_config
    from kairos.deps import LayerDeps
    from kairos.edge import EdgeState
    from kairos.runtime import compile_runtime
    from kairos.upstream.client import UpstreamClient

    dns.set("rt.test", "A", ["10.0.0.1", "10.0.0.2"])
    cfg = parse_config({"discovery": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout_ms": 300,
                                      "refresh_ms": 60_000},
                        "routers": [{"external_path": "/a", "internal_path": "/", "methods": ["GET"],
                                     "backends": [{"host": "http://rt.test", "port": 80}]}]})
    deps = LayerDeps(UpstreamClient(), EdgeState())
    supervisor = DiscoverySupervisor()
    first = compile_runtime(cfg, deps)
    supervisor.sync(first.discovered)
    await supervisor.start()
    try:
        kept = first.backends["http://10.0.0.1:80"]
        kept.in_flight = 3
        second = compile_runtime(cfg, deps, previous=first)
        supervisor.sync(second.discovered)  # what Gateway.swap does
        assert second.backends["http://10.0.0.1:80"] is kept and kept.in_flight == 3
        assert second.routes[0].cluster.balancer.backends[0] is kept
        # 10.0.0.2 leaves and comes back: a new object (its old gauges were forgotten).
        old_b = second.backends["http://10.0.0.2:80"]
        (lookup,) = second.discovered[0].lookups
        supervisor.answer(lookup, [Endpoint("10.0.0.1", 0, 0, "rt.test")])
        assert second.members_changed() == {"http://10.0.0.2:80"}
        supervisor.answer(lookup, [Endpoint("10.0.0.1", 0, 0, "rt.test"), Endpoint("10.0.0.2", 0, 0, "rt.test")])
        assert second.backends["http://10.0.0.2:80"] is not old_b
    finally:
        await supervisor.aclose()
