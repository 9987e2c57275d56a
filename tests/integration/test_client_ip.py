"""Client identity: the socket peer, or the rightmost untrusted X-Forwarded-For address behind trusted proxies."""

from __future__ import annotations

import httpx
import pytest

from edge_support import route
from kairos.clientip import ClientIdentity


def scope(peer: str, *xff: str, proto: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", v.encode()) for v in xff]
    if proto:
        headers.append((b"x-forwarded-proto", proto.encode()))
    return {"client": (peer, 1234), "headers": headers}


@pytest.mark.parametrize("trusted,peer,xff,expected", [
    ([], "203.0.113.9", ["1.2.3.4"], "203.0.113.9"),                       # untrusted peer: XFF ignored
    (["10.0.0.0/8"], "203.0.113.9", ["1.2.3.4"], "203.0.113.9"),           # peer not in the trusted list
    (["10.0.0.0/8"], "10.0.0.5", ["1.2.3.4"], "1.2.3.4"),
    (["10.0.0.0/8"], "10.0.0.5", ["6.6.6.6, 1.2.3.4, 10.0.0.7"], "1.2.3.4"),  # rightmost untrusted wins
    (["10.0.0.0/8"], "10.0.0.5", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),       # repeated headers joined in order
    (["10.0.0.0/8"], "10.0.0.5", ["10.0.0.8, 10.0.0.7"], "10.0.0.8"),      # all trusted: the leftmost
    (["10.0.0.0/8"], "10.0.0.5", ["1.2.3.4, garbage"], "10.0.0.5"),        # garbled chain: the peer
    (["10.0.0.0/8"], "10.0.0.5", [], "10.0.0.5"),
    (["::1/128"], "::1", ["2001:db8::1"], "2001:db8::1"),
])
def test_resolve(trusted, peer, xff, expected):
    assert ClientIdentity(trusted).resolve(scope(peer, *xff)) == expected


def test_forwarded_proto_only_from_trusted_proxy():
    s = scope("10.0.0.5", "1.2.3.4", proto="https")
    ClientIdentity(["10.0.0.0/8"]).resolve(s)
    assert s["kairos.forwarded_proto"] == "https"
    s = scope("203.0.113.9", "1.2.3.4", proto="https")
    ClientIdentity(["10.0.0.0/8"]).resolve(s)
    assert "kairos.forwarded_proto" not in s


def _config(upstream, trusted):
    return {"server": {"trusted_proxies": trusted},
            "rate_limit": {"strategy": "PerIP", "requests_per_window": 2, "window_duration": 60,
                           "window_type": "FixedWindow"},
            "routers": [route(upstream)]}


def test_xff_spoofing_cannot_change_the_rate_limit_key(upstream, gateway):
    """Through a real `kairos serve` (uvicorn on 127.0.0.1): XFF from an untrusted peer is ignored."""
    gw = gateway(_config(upstream, []))
    with httpx.Client(timeout=10, trust_env=False) as c:
        codes = [c.get(gw.url + "/api", headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]


def test_trusted_proxy_forwards_the_client_address(upstream, gateway):
    gw = gateway(_config(upstream, ["127.0.0.1/32"]))
    with httpx.Client(timeout=10, trust_env=False) as c:
        codes = [c.get(gw.url + "/api", headers={"x-forwarded-for": f"198.51.100.{i}"}).status_code for i in range(4)]
        assert codes == [200] * 4  # each a different client
        same = [c.get(gw.url + "/api", headers={"x-forwarded-for": "6.6.6.6, 198.51.100.77"}).status_code
                for _ in range(3)]
        assert same == [200, 200, 429]  # the spoofable leftmost entry does not matter
