"""An unexpected exception inside the gateway is a JSON 500 with the usual headers, never a traceback."""

from __future__ import annotations

import httpx

import kairos


def config(up) -> dict:
    return {"routers": [{"external_path": "/api/{rest:path}", "internal_path": "/{rest}", "methods": ["GET"], "host": up.host, "port": up.port}]}


async def test_unexpected_exception_is_a_json_500(upstream):
    app = kairos.create_app(config(upstream))
    route = app.state.gateway.runtime.routes[0]

    async def broken(scope, receive, send):
        raise RuntimeError("secret internals /etc/passwd")

    route.pipeline = broken
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/api/x", headers={"x-request-id": "rid-1"})
    assert r.status_code == 500
    body = r.json()
    assert body["type"] == "internal" and body["request_id"] == "rid-1"
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert r.headers["x-request-id"] == "rid-1"
    assert r.headers["x-content-type-options"] == "nosniff"
    await app.state.gateway.aclose()


async def test_own_endpoints_still_go_through_starlette(upstream):
    app = kairos.create_app(config(upstream))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.post("/health")
        assert r.status_code == 405 and r.json()["type"] == "method_not_allowed"
        r = await c.get("/metrics")
        assert r.status_code == 200 and "kairos_requests_total" in r.text
    await app.state.gateway.aclose()
