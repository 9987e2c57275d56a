"""Security headers, CORS and body size limits against a real gateway subprocess."""

from __future__ import annotations

import httpx

from ops_helpers import config, route

DEFAULTS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "content-security-policy": "default-src 'self'",
    "permissions-policy": "geolocation=(), microphone=(), camera=()",
}


def assert_defaults(r: httpx.Response) -> None:
    for name, value in DEFAULTS.items():
        assert r.headers.get(name) == value, (r.request.url, name, dict(r.headers))


# --------------------------------------------------------------------------- security headers


def test_security_headers_on_every_response(upstream, make_upstream, gateway, sync_client):
    dead = make_upstream()
    dead_backend = dead.backend()
    dead.stop()
    gw = gateway(config(route(upstream), route(dead, external="/dead", internal="/", methods=["GET"]) | {"backends": [dead_backend]}))
    responses = [
        sync_client.get(gw.url + "/api/1"),            # proxied
        sync_client.get(gw.url + "/nothing-here"),     # 404
        sync_client.delete(gw.url + "/api/1"),         # 405
        sync_client.get(gw.url + "/dead"),             # 502
        sync_client.get(gw.url + "/health"),
        sync_client.get(gw.url + "/metrics"),
        sync_client.post(gw.url + "/ready"),           # 405 from the gateway's own endpoint
    ]
    assert [r.status_code for r in responses] == [200, 404, 405, 502, 200, 200, 405]
    for r in responses:
        assert_defaults(r)
        assert "strict-transport-security" not in r.headers  # plain http, no trusted proxy
        assert r.headers.get_list("x-frame-options") == ["DENY"]


def test_route_override_and_switch_off(upstream, gateway, sync_client):
    gw = gateway(config(
        route(upstream),
        route(upstream, external="/embed/{id}", security_headers={"headers": {"x-frame-options": "SAMEORIGIN", "content-security-policy": None}}),
        route(upstream, external="/raw/{id}", security_headers={"enabled": False}),
        security_headers={"headers": {"x-extra-policy": "on"}},
    ))
    r = sync_client.get(gw.url + "/api/1")
    assert_defaults(r)
    assert r.headers["x-extra-policy"] == "on"
    r = sync_client.get(gw.url + "/embed/1")
    assert r.headers["x-frame-options"] == "SAMEORIGIN"
    assert "content-security-policy" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-extra-policy"] == "on"
    r = sync_client.get(gw.url + "/raw/1")
    assert r.status_code == 200
    assert not any(name in r.headers for name in DEFAULTS)
    # the route's own 405 uses the route's set too
    r = sync_client.delete(gw.url + "/embed/1")
    assert r.status_code == 405 and r.headers["x-frame-options"] == "SAMEORIGIN"


def test_upstream_header_left_alone_unless_override(upstream, gateway, sync_client):
    # The upstream's /stream sets Content-Type: it stands in for any header an upstream sets itself.
    gw = gateway(config(
        route(upstream, external="/keep/{id}", internal="/stream"),
        route(upstream, external="/force/{id}", internal="/stream", security_headers={"override_upstream": True, "headers": {"content-type": "text/x-forced"}}),
    ))
    r = sync_client.get(gw.url + "/keep/1", params={"chunks": 1})
    assert r.headers.get_list("content-type") == ["application/octet-stream"]
    gw2 = gateway(config(
        route(upstream, external="/keep/{id}", internal="/stream", security_headers={"headers": {"content-type": "text/x-forced"}}),
    ))
    r = sync_client.get(gw2.url + "/keep/1", params={"chunks": 1})
    assert r.headers.get_list("content-type") == ["application/octet-stream"]
    r = sync_client.get(gw.url + "/force/1", params={"chunks": 1})
    assert r.headers.get_list("content-type") == ["text/x-forced"]


def test_hsts_only_for_https_from_trusted_proxy(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream), server={"trusted_proxies": ["127.0.0.1/32"]}))
    r = sync_client.get(gw.url + "/api/1", headers={"x-forwarded-proto": "https"})
    assert r.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    r = sync_client.get(gw.url + "/nope", headers={"x-forwarded-proto": "https"})
    assert "strict-transport-security" in r.headers
    r = sync_client.get(gw.url + "/health", headers={"x-forwarded-proto": "https"})
    assert "strict-transport-security" in r.headers
    r = sync_client.get(gw.url + "/api/1")
    assert "strict-transport-security" not in r.headers
    untrusted = gateway(config(route(upstream)))
    r = sync_client.get(untrusted.url + "/api/1", headers={"x-forwarded-proto": "https"})
    assert "strict-transport-security" not in r.headers


# --------------------------------------------------------------------------- CORS

CORS = {"allowed_origins": ["https://app.example.com", "https://*.example.org", "http://localhost:*"],
        "allowed_methods": ["GET", "POST"], "allowed_headers": ["content-type", "x-token"],
        "expose_headers": ["x-upstream"], "allow_credentials": True, "max_age": 120}


def preflight(client, url, origin, method="POST", headers="content-type"):
    h = {"origin": origin, "access-control-request-method": method}
    if headers:
        h["access-control-request-headers"] = headers
    return client.options(url, headers=h)


def test_cors_preflight_answered_by_gateway(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream, cors=CORS)))
    for origin in ("https://app.example.com", "https://a.example.org", "https://a.b.example.org", "http://localhost:3000"):
        r = preflight(sync_client, gw.url + "/api/1", origin)
        assert r.status_code == 204, (origin, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-methods"] == "GET, POST"
        assert r.headers["access-control-allow-headers"] == "content-type, x-token"
        assert r.headers["access-control-max-age"] == "120"
        assert "Origin" in r.headers["vary"]
        assert_defaults(r)
    assert upstream.count == 0  # never reached the upstream (and the route has no OPTIONS method)
    for origin in ("https://evil.example.com", "https://example.org", "https://a.example.org.evil.com", "null"):
        r = preflight(sync_client, gw.url + "/api/1", origin)
        assert r.status_code == 204
        assert not [h for h in r.headers if h.startswith("access-control-")], (origin, dict(r.headers))
        assert "Origin" in r.headers["vary"]
    assert upstream.count == 0
    text = sync_client.get(gw.url + "/metrics").text
    assert 'route="/api/{id}"' in text and 'status="204"' in text


def test_cors_actual_requests(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream, cors=CORS)))
    r = sync_client.get(gw.url + "/api/1", headers={"origin": "https://app.example.com"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert r.headers["access-control-expose-headers"] == "x-upstream"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in r.headers["vary"]
    r = sync_client.get(gw.url + "/api/1", headers={"origin": "https://evil.com"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert "Origin" in r.headers["vary"]
    r = sync_client.get(gw.url + "/api/1")
    assert "access-control-allow-origin" not in r.headers and "Origin" in r.headers["vary"]
    # wildcard without credentials answers '*'
    gw2 = gateway(config(route(upstream), cors={"allowed_origins": ["*"]}))
    r = sync_client.get(gw2.url + "/api/1", headers={"origin": "https://any.where"})
    assert r.headers["access-control-allow-origin"] == "*"
    r = preflight(sync_client, gw2.url + "/api/1", "https://any.where", method="GET", headers=None)
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"


def test_route_without_cors_passes_options_through(upstream, gateway, sync_client):
    gw = gateway(config(
        route(upstream, methods=["GET", "OPTIONS"]),
        route(upstream, external="/cors/{id}", methods=["GET", "OPTIONS"], cors={"allowed_origins": ["https://a.example"]}),
    ))
    r = preflight(sync_client, gw.url + "/api/1", "https://a.example")
    assert r.status_code == 200 and r.headers["x-upstream"] == "upstream"
    assert upstream.count == 1 and upstream.last.method == "OPTIONS"
    # a CORS route answers preflights itself even if it lists OPTIONS ...
    r = preflight(sync_client, gw.url + "/cors/1", "https://a.example")
    assert r.status_code == 204 and upstream.count == 1
    # ... and passes a plain OPTIONS (no preflight headers) through.
    r = sync_client.options(gw.url + "/cors/1")
    assert r.status_code == 200 and upstream.count == 2


def test_cors_wildcard_with_credentials_is_a_config_error(kairos_cli, tmp_path):
    import json

    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"version": 1, "cors": {"allowed_origins": ["*"], "allow_credentials": True}, "routers": []}))
    done = kairos_cli("validate", str(p))
    assert done.returncode == 1
    assert "allow_credentials" in done.stderr


# --------------------------------------------------------------------------- body size limits


def chunked(data: bytes, size: int = 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_declared_length_over_limit_is_413_before_upstream(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream), route(upstream, external="/big/{id}", max_body_size=0),
                        route(upstream, external="/small/{id}", max_body_size=10), max_body_size=1000))
    r = sync_client.post(gw.url + "/api/1", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["type"] == "payload_too_large"
    assert_defaults(r)
    assert upstream.count == 0
    assert sync_client.post(gw.url + "/api/1", content=b"x" * 1000).status_code == 200
    assert sync_client.post(gw.url + "/small/1", content=b"x" * 11).status_code == 413
    r = sync_client.post(gw.url + "/big/1", content=b"x" * 200_000)  # 0 = unlimited
    assert r.status_code == 200 and r.json()["body_len"] == 200_000
    assert upstream.count == 2


def test_default_limit_is_10_mib(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)))
    r = sync_client.post(gw.url + "/api/1", content=b"x" * (10 * 1024 * 1024 + 1))
    assert r.status_code == 413


def test_chunked_body_cut_at_limit(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream), max_body_size=50_000))
    r = sync_client.post(gw.url + "/api/1", content=chunked(b"y" * 40_000))
    assert r.status_code == 200 and r.json()["body_len"] == 40_000
    with httpx.Client(timeout=10, trust_env=False) as c:
        r = c.post(gw.url + "/api/1", content=chunked(b"y" * 200_000))
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "payload_too_large"
    # the gateway keeps serving
    assert sync_client.get(gw.url + "/api/2").status_code == 200


def test_ops_example_configs_are_valid(kairos_cli):
    from tests.conftest import REPO_ROOT

    for name in ("ops-production.json", "cors-spa.json", "security-headers.json"):
        done = kairos_cli("validate", str(REPO_ROOT / "configs" / name))
        assert done.returncode == 0, done.stderr


def test_bad_origins_and_header_values_are_config_errors(kairos_cli, tmp_path):
    import json

    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"version": 1, "routers": [],
                             "cors": {"allowed_origins": ["https://ok.example", "example.com/path"]},
                             "security_headers": {"headers": {"x-bad": "a\r\nInjected: 1"}}}))
    done = kairos_cli("validate", str(p))
    assert done.returncode == 1
    assert "example.com/path" in done.stderr and "control characters" in done.stderr
