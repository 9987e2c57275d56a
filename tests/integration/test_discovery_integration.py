"""DNS discovery through a real gateway subprocess: a real UDP DNS server in the test
(tests/dns_server.py), real upstreams on 127.0.0.1 and 127.0.0.2.

No durations asserted: membership is read from X-Upstream, the upstreams' request
counts, the log events and /metrics.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from dns_server import DnsServer
from tests.ops_helpers import config, metric_value, wait_until
from upstream import Upstream

pytestmark = pytest.mark.timeout(60)


class SecondLoopbackUpstream(Upstream):
    host = "http://127.0.0.2"
    address = "127.0.0.2"


@pytest.fixture
def dns():
    server = DnsServer().start()
    yield server
    server.stop()


def discovery(dns, **kw) -> dict:
    return {"type": "dns", "nameservers": ["127.0.0.1"], "port": dns.port, "refresh_ms": 100, "timeout_ms": 500, **kw}


def route(backends: list[dict] | None = None, **extra) -> dict:
    r = {"external_path": "/svc/{rest:path}", "internal_path": "/{rest}", "methods": ["GET"], **extra}
    if backends is not None:
        r["backends"] = backends
    return r


def seq(gw, n: int, path: str = "/svc/echo") -> list[str | None]:
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        return [c.get(path).headers.get("x-upstream") for _ in range(n)]


def events(gw, name: str) -> list[dict]:
    return [r for r in gw.log_records() if r.get("event") == name]


def test_every_a_record_becomes_a_backend_and_changes_apply_without_dropping_requests(dns, gateway):
    a = Upstream("a").start()
    b = SecondLoopbackUpstream("b", port=a.port).start()
    try:
        dns.set("users.test", "A", ["127.0.0.1"])
        gw = gateway(config(route([{"host": "http://users.test", "port": a.port}],
                                  health_check={"path": "/healthz", "interval_ms": 100}),
                            discovery=discovery(dns)))
        assert set(seq(gw, 4)) == {"a"}  # the first answer was in before the gateway said ready
        assert a.requests[-1].header("host") == f"users.test:{a.port}"  # the name, not the address

        dns.set("users.test", "A", ["127.0.0.1", "127.0.0.2"])
        wait_until(lambda: set(seq(gw, 4)) == {"a", "b"})
        wait_until(lambda: b.health_count > 0)  # the new member is health-checked too
        change = events(gw, "discovery_members_changed")[-1]
        assert change["added"] == [f"http://127.0.0.2:{a.port}"] and change["removed"] == []

        dns.fail = "servfail"  # DNS down: the last good set stays
        wait_until(lambda: events(gw, "discovery_failed"))
        assert set(seq(gw, 4)) == {"a", "b"}
        dns.fail = None

        # A request in flight on the member that leaves DNS finishes normally.
        slow: list[httpx.Response] = []
        before = {u.name: u.count for u in (a, b)}
        thread = threading.Thread(target=lambda: slow.append(
            httpx.get(gw.url + "/svc/slow?ms=1500", timeout=10, trust_env=False)))
        thread.start()
        wait_until(lambda: a.count + b.count > sum(before.values()))
        leaving, staying = (a, b) if a.count > before["a"] else (b, a)
        dns.set("users.test", "A", [staying.address])
        gone = f"http://{leaving.address}:{a.port}"
        wait_until(lambda: events(gw, "discovery_members_changed")[-1]["removed"] == [gone])
        thread.join(10)
        assert [(r.status_code, r.headers["x-upstream"]) for r in slow] == [(200, leaving.name)]
        assert set(seq(gw, 4)) == {staying.name}
        metrics = httpx.get(gw.url + "/metrics", trust_env=False).text
        added = metric_value(metrics, "kairos_discovery_membership_changes_total", route="/svc/{rest:path}",
                             change="added")
        removed = metric_value(metrics, "kairos_discovery_membership_changes_total", route="/svc/{rest:path}",
                               change="removed")
        assert (added, removed) == (2, 1)
        assert metric_value(metrics, "kairos_discovery_resolutions_total", dns_name="users.test", result="error") >= 1
        assert f'kairos_backend_up{{backend="{gone}"}}' not in metrics  # the removed member's series went
    finally:
        a.stop()
        b.stop()


def test_srv_records_give_hosts_ports_and_weights_lowest_priority_only(dns, gateway, make_upstream):
    a, b, backup, local = make_upstream(4)
    dns.set("_http._tcp.users.test", "SRV", [f"10 3 {a.port} a.users.test.", f"10 1 {b.port} b.users.test.",
                                             f"20 1 {backup.port} c.users.test."])
    dns.set("a.users.test", "A", ["127.0.0.1"])
    dns.set("b.users.test", "A", ["127.0.0.1"])
    dns.set("c.users.test", "A", ["127.0.0.1"])
    srv = dict(discovery(dns), type="dns_srv", name="_http._tcp.users.test")
    gw = gateway(config(
        route(load_balancing_strategy="weighted", discovery=srv),
        # Under the top-level `dns` block, localhost and IP literals stay as written.
        dict(route([{"host": "http://localhost", "port": local.port}, {"host": "http://127.0.0.1", "port": local.port}]),
             external_path="/local/{rest:path}"),
        discovery=discovery(dns),
    ))
    assert seq(gw, 8).count(a.name) == 6
    assert backup.count == 0
    assert a.requests[-1].header("host") == f"a.users.test:{a.port}"
    assert seq(gw, 2, "/local/echo") == [local.name] * 2
    assert not [q for q in dns.queries if "localhost" in q[0] or q[0].startswith("127.")]
