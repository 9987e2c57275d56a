"""Tracing through a real gateway subprocess, a real upstream and a real OTLP/HTTP receiver.

No durations asserted: propagation is read from what the upstream received, spans from
what the receiver decoded, the trace id from the access log.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import free_port
from otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER}-01"


@pytest.fixture
def receiver():
    r = OtlpReceiver().start()
    yield r
    r.stop()


def config(up, tracing: dict | None = None, **route_extra) -> dict:
    route = {"external_path": "/api/{id}", "internal_path": "/echo/{id}", "methods": ["GET"],
             "backends": [up.backend()], **route_extra}
    denied = {"external_path": "/denied/{id}", "internal_path": "/echo/{id}", "methods": ["GET"],
              "backends": [up.backend()], "ip_deny": ["127.0.0.0/8"]}
    cfg = {"version": 1, "routers": [route, denied]}
    if tracing is not None:
        cfg["tracing"] = tracing
    return cfg


# The SDK's standard knob: export every 100 ms instead of every 5 s, so the tests do not wait.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def get(gw, path: str = "/api/7", **headers: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers=headers, timeout=10, trust_env=False)


def test_tracing_off_passes_trace_headers_through_unchanged(upstream, gateway):
    gw = gateway(config(upstream))
    assert get(gw, traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE").status_code == 200
    seen = upstream.requests[-1]
    assert seen.header("traceparent") == TRACEPARENT and seen.header("tracestate") == "congo=t61rcWkgMzE"
    access = [r for r in gw.log_records() if r.get("event") == "access"]
    assert access and "trace_id" not in access[-1]


def test_spans_are_exported_and_the_gateway_span_parents_each_attempt(make_upstream, gateway, receiver):
    up = make_upstream()
    gw = gateway(config(up, {"enabled": True, "endpoint": receiver.endpoint, "sampler": "always_on",
                             "headers": {"x-api-key": "collector-secret"}},
                        retry={"max_retries": 1, "initial_backoff_ms": 1}), env=FAST_EXPORT)
    up.fail_next(1)  # the first attempt answers 503: a retry, a second client span
    response = get(gw, traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE")
    assert response.status_code == 200
    spans = receiver.wait_for(3)
    server = [s for s in spans if s["kind"] == 2]
    clients = sorted((s for s in spans if s["kind"] == 3), key=lambda s: s["attributes"]["kairos.attempt"])
    assert len(server) == 1 and len(clients) == 2
    assert server[0]["name"] == "GET /api/{id}" and server[0]["trace_id"] == TRACE_ID
    assert server[0]["parent_span_id"] == CALLER
    assert server[0]["attributes"]["http.response.status_code"] == 200
    assert server[0]["attributes"]["kairos.backend"] == up.backend()["host"] + f":{up.port}"
    assert [c["parent_span_id"] for c in clients] == [server[0]["span_id"]] * 2
    assert [c["attributes"].get("http.response.status_code") for c in clients] == [503, 200]
    # What the upstream saw: the trace continued, its parent is the attempt's span.
    forwarded = [r.header("traceparent") for r in up.requests[-2:]]
    assert forwarded == [f"00-{TRACE_ID}-{c['span_id']}-01" for c in clients]
    assert up.requests[-1].header("tracestate") == "congo=t61rcWkgMzE"
    # The access log line carries the trace id; the exporter's secret header never reaches the log.
    record = gw.wait_for_log(lambda r: r.get("event") == "access")
    assert record["trace_id"] == TRACE_ID
    assert "collector-secret" not in gw.logs()
    assert receiver.headers[0]["x-api-key"] == "collector-secret"
    # A refusal is an event on the server span.
    assert get(gw, "/denied/1").status_code == 403
    (span,) = [s for s in receiver.wait_for(4) if s["name"] == "GET /denied/{id}"]
    assert span["events"] == ["ip_refused"] and span["attributes"]["http.response.status_code"] == 403


def test_requests_succeed_while_the_collector_refuses_connections(upstream, gateway):
    gw = gateway(config(upstream, {"enabled": True, "endpoint": f"http://127.0.0.1:{free_port()}/v1/traces",
                                   "sampler": "always_on"}), env=FAST_EXPORT)
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as client:
        statuses = [client.get("/api/1").status_code for _ in range(100)]
    assert statuses == [200] * 100
    assert gw.alive()
    # The SDK's complaint is a JSON log line like any gateway event, not a stray stderr line.
    record = gw.wait_for_log(lambda r: r.get("logger", "").startswith("opentelemetry"))
    assert "export" in record["message"].lower()
