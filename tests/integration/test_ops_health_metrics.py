"""Health endpoints, /metrics and the access log, against a real gateway subprocess."""

from __future__ import annotations

import re
from datetime import datetime

import httpx

from ops_helpers import config, metric_value, route

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def test_health_live_ready_bodies(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)))
    for path, status in (("/health", "healthy"), ("/live", "alive"), ("/ready", "ready")):
        r = sync_client.get(gw.url + path)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert body["status"] == status
        assert body["version"] == "0.1.0"
        # real seconds since start, not the Unix time (kairos-rs's bug)
        assert 0 <= body["uptime_seconds"] < 3600
        assert RFC3339.match(body["timestamp"]), body["timestamp"]
        datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
        assert r.headers["content-type"] == "application/json"
    assert sync_client.head(gw.url + "/health").status_code == 200
    # A wrong method on the gateway's own endpoints is a JSON error too.
    r = sync_client.post(gw.url + "/health")
    assert r.status_code == 405 and r.json()["type"] == "method_not_allowed"
    assert upstream.count == 0


def test_health_is_answered_before_policies_and_not_counted(upstream, gateway, sync_client):
    # A global CORS + 1-byte body limit do not touch the gateway's own endpoints.
    gw = gateway(config(route(upstream), max_body_size=1, cors={"allowed_origins": ["https://a.example"]}))
    for _ in range(3):
        assert sync_client.get(gw.url + "/health").status_code == 200
        assert sync_client.get(gw.url + "/ready").status_code == 200
    text = sync_client.get(gw.url + "/metrics").text
    assert "/health" not in text and "/ready" not in text and "/metrics" not in text
    assert metric_value(text, "kairos_requests_total") == 0
    assert not [r for r in gw.log_records() if r.get("event") == "access"]


def test_request_metrics_route_templates_and_unmatched(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)))
    for i in range(5):
        assert sync_client.get(gw.url + f"/api/{i}").status_code == 200
    assert sync_client.post(gw.url + "/api/9", content=b"x").status_code == 200
    assert sync_client.get(gw.url + "/nope/1").status_code == 404
    assert sync_client.get(gw.url + "/nope/2").status_code == 404
    assert sync_client.delete(gw.url + "/api/1").status_code == 405
    text = sync_client.get(gw.url + "/metrics").text
    assert metric_value(text, "kairos_requests_total", route="/api/{id}", method="GET", status="200") == 5
    assert metric_value(text, "kairos_requests_total", route="/api/{id}", method="POST", status="200") == 1
    assert metric_value(text, "kairos_requests_total", route="unmatched", method="GET", status="404") == 2
    # a 405 counts under the route whose path matched
    assert metric_value(text, "kairos_requests_total", route="/api/{id}", method="DELETE", status="405") == 1
    # raw paths never become labels
    assert "/api/1" not in text and "/nope" not in text
    assert metric_value(text, "kairos_request_duration_seconds_count", route="/api/{id}", method="GET") == 5
    assert 'le="0.001"' in text and 'le="30.0"' in text
    assert metric_value(text, "kairos_build_info", version="0.1.0") == 1
    assert metric_value(text, "kairos_active_requests") == 0
    assert "kairos_config_reloads_total" in text


def test_metrics_openmetrics_when_asked(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)))
    sync_client.get(gw.url + "/api/1")
    r = sync_client.get(gw.url + "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    r = sync_client.get(gw.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")


def test_metrics_add_up_across_two_workers(upstream, gateway):
    gw = gateway(config(route(upstream)), workers=2)
    n = 60
    # New connections each time, so both workers get a share.
    for i in range(n):
        with httpx.Client(timeout=10, trust_env=False) as c:
            assert c.get(gw.url + f"/api/{i}").status_code == 200
    pids = set()
    for _ in range(10):
        with httpx.Client(timeout=10, trust_env=False) as c:
            text = c.get(gw.url + "/metrics").text
            assert metric_value(text, "kairos_requests_total", route="/api/{id}", method="GET", status="200") == n
            assert metric_value(text, "kairos_build_info", version="0.1.0") == 1
    served_by = {r.get("pid") for r in gw.log_records() if r.get("event") == "startup"}
    pids |= served_by
    assert len(pids) == 2, gw.output()


def test_access_log_line_fields_and_no_secrets(upstream, gateway, sync_client):
    secret = "s" * 40
    gw = gateway(config(route(upstream), jwt={"secret": secret}))
    r = sync_client.post(
        gw.url + "/api/7?x=1&token=abc123",
        content=b"hello",
        headers={"authorization": "Bearer topsecret-token", "cookie": "session=cookie-secret",
                 "user-agent": "ops-test/1.0", "x-request-id": "req-ops-1"},
    )
    assert r.status_code == 200
    sync_client.get(gw.url + "/missing")
    rec = gw.wait_for_log(lambda r: r.get("event") == "access" and r.get("request_id") == "req-ops-1")
    assert rec["level"] == "info"
    assert RFC3339.match(rec["timestamp"])
    assert rec["client_ip"] == "127.0.0.1"
    assert rec["method"] == "POST" and rec["path"] == "/api/7"
    assert rec["query"].startswith("x=1&token=") and "abc123" not in rec["query"]
    assert rec["route"] == "/api/{id}" and rec["status"] == 200
    assert isinstance(rec["duration_ms"], (int, float)) and rec["duration_ms"] >= 0
    assert rec["upstream"] == f"http://127.0.0.1:{upstream.port}"
    assert rec["bytes_in"] == 5 and rec["bytes_out"] == len(r.content)
    assert rec["user_agent"] == "ops-test/1.0"
    miss = gw.wait_for_log(lambda r: r.get("event") == "access" and r.get("path") == "/missing")
    assert miss["route"] == "unmatched" and miss["status"] == 404 and miss["upstream"] is None
    out = gw.logs() + gw.stderr()
    for leaked in ("topsecret-token", "cookie-secret", secret, "abc123"):
        assert leaked not in out
    # gateway events are JSON lines too
    assert gw.wait_for_log(lambda r: r.get("event") == "startup")


def test_access_log_switched_off_by_environment(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream)), env={"KAIROS_LOGGING__ACCESS_LOG": "false"})
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    text = sync_client.get(gw.url + "/metrics").text
    assert metric_value(text, "kairos_requests_total", route="/api/{id}") == 1  # still counted
    assert not [r for r in gw.log_records() if r.get("event") == "access"]


def test_log_level_from_config_filters_events(upstream, gateway, sync_client):
    gw = gateway(config(route(upstream), logging={"level": "warning"}))
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    gw.wait_for_log(lambda r: r.get("event") == "access")
    assert not [r for r in gw.log_records() if r.get("event") == "startup"]


def test_upstream_metrics(upstream, make_upstream, gateway, sync_client):
    dead = make_upstream()
    dead_backend = dead.backend()
    dead.stop()
    gw = gateway(config(route(upstream), {"external_path": "/dead", "internal_path": "/", "methods": ["GET"],
                                          "backends": [dead_backend]}))
    up = f"http://127.0.0.1:{upstream.port}"
    down = f"http://127.0.0.1:{dead_backend['port']}"
    assert sync_client.get(gw.url + "/api/1").status_code == 200
    upstream.fail_next(2, status=503)
    assert sync_client.get(gw.url + "/api/1").status_code == 503
    assert sync_client.get(gw.url + "/api/1").status_code == 503
    assert sync_client.get(gw.url + "/dead").status_code in (502, 504)
    text = sync_client.get(gw.url + "/metrics").text
    assert metric_value(text, "kairos_upstream_request_duration_seconds_count", backend=up) == 3
    assert metric_value(text, "kairos_upstream_errors_total", backend=up, kind="status") == 2
    assert metric_value(text, "kairos_upstream_errors_total", backend=down, kind="connect") == 1
