"""ip_allow / ip_deny, global defaults and per-route overrides."""

from __future__ import annotations

from edge_support import client_for, inproc, route


async def test_allow_and_deny(upstream):
    config = {
        "ip_deny": ["10.66.0.0/16"],
        "routers": [
            route(upstream, "/default"),
            route(upstream, "/internal", ip_allow=["10.0.0.0/8", "::1/128"]),
            route(upstream, "/override", ip_deny=[]),  # a route's own (empty) list replaces the default
        ],
    }
    async with inproc(config, client_ip="10.66.1.1") as denied:
        async with client_for(denied.app, "10.1.1.1") as internal, client_for(denied.app, "203.0.113.5") as outside, \
                client_for(denied.app, "::ffff:10.66.1.2") as mapped:
            r = await denied.get("/default")
            assert r.status_code == 403 and r.json()["type"] == "forbidden"
            assert (await mapped.get("/default")).status_code == 403  # IPv4-mapped IPv6 is the same address
            assert (await internal.get("/default")).status_code == 200
            assert (await outside.get("/default")).status_code == 200
            assert (await internal.get("/internal")).status_code == 200
            assert (await outside.get("/internal")).status_code == 403
            assert (await denied.get("/internal")).status_code == 403  # deny (inherited) wins over allow
            assert (await denied.get("/override")).status_code == 200
