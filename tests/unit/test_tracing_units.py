"""Tracing without sockets: the config block, the spans' structure (in-memory exporter),
W3C propagation in both sampling states, refusal events."""

from __future__ import annotations

import sys
import threading

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kairos.config import ConfigError, parse_config
from kairos.errors import GatewayError
from kairos.tracing.config import TracingConfig
from kairos.tracing.layer import Tracing
from kairos.tracing.tracers import Tracers
from kairos.tracing.tracer import Tracer

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


def incoming(sampled: bool = True, state: str | None = "vendor=abc") -> list[tuple[bytes, bytes]]:
    headers = [(b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{'01' if sampled else '00'}".encode())]
    if state:
        headers.append((b"tracestate", state.encode()))
    return headers


def scope(headers=()) -> dict:
    return {
        "type": "http", "method": "GET", "path": "/api/7", "scheme": "http", "http_version": "1.1",
        "headers": [(b"host", b"gw.example:8080"), (b"user-agent", b"t/1"), *headers],
        "client": ("10.1.1.1", 5000), "kairos.request_id": "rid-1", "kairos.client_ip": "10.1.1.1",
    }


def make_tracer(sampler: str = "always_on") -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    config = TracingConfig(enabled=True, exporter="none", sampler=sampler, ratio=0.0)
    return Tracer(config, exporter, batch=False), exporter


def upstream_app(attempts: int = 1, status: int = 200, forwarded: list | None = None):
    """Plays the Forwarder: one client span per attempt, the last one answers `status`."""

    async def app(s, receive, send):
        trace = s["kairos.trace"]
        for n in range(attempts):
            headers: list[tuple[bytes, bytes]] = []
            span = trace.attempt("GET", "http://10.0.0.5:9000", "10.0.0.5", 9000, "/7?q=secret", headers)
            if forwarded is not None:
                forwarded.append(dict(headers))
            trace.attempt_done(span, 503 if n < attempts - 1 else status)
        s["kairos.backend"] = "http://10.0.0.5:9000"
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def receive():
    return {"type": "http.request", "body": b""}


async def run(app, s) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    await app(s, receive, send)
    return sent


def parse_traceparent(value: bytes) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = value.decode().split("-")
    assert version == "00"
    return trace_id, span_id, flags


# ---------------------------------------------------------------------------- config
def test_tracing_is_off_by_default_and_its_block_is_validated():
    assert parse_config({}).tracing.enabled is False
    with pytest.raises(ConfigError) as info:
        parse_config({"tracing": {"enabled": True, "sampler": "sometimes", "endpoint": "localhost:4318"}})
    problems = " ".join(info.value.problems)
    assert "tracing.sampler" in problems and "tracing.endpoint" in problems


@pytest.mark.parametrize("module", ["opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"])
def test_enabling_tracing_without_the_extra_names_it(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ConfigError) as info:
        parse_config({"tracing": {"enabled": True}})
    assert "kairos-gateway[otel]" in " ".join(info.value.problems)
    parse_config({"tracing": {"enabled": False}})  # off: the SDK is not needed


def test_exporter_headers_never_show(monkeypatch):
    config = parse_config({"tracing": {"enabled": True, "exporter": "none", "headers": {"api-key": "s3cr3t-value"}}})
    assert "s3cr3t-value" not in repr(config) and "s3cr3t-value" not in config.model_dump_json()
    assert config.tracing.headers["api-key"].get_secret_value() == "s3cr3t-value"


# ---------------------------------------------------------------------------- spans
async def test_server_span_continues_the_callers_trace_and_parents_each_attempt():
    tracer, exporter = make_tracer()
    forwarded: list[dict] = []
    s = scope(incoming())
    await run(Tracing(upstream_app(attempts=2, forwarded=forwarded), tracer, "/api/{id}"), s)
    spans = exporter.get_finished_spans()
    server = [sp for sp in spans if sp.kind == SpanKind.SERVER]
    clients = sorted((sp for sp in spans if sp.kind == SpanKind.CLIENT), key=lambda sp: sp.attributes["kairos.attempt"])
    assert len(server) == 1 and len(clients) == 2
    server = server[0]
    assert server.name == "GET /api/{id}"  # the template, never the raw path
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    attrs = server.attributes
    assert attrs["http.request.method"] == "GET" and attrs["http.route"] == "/api/{id}"
    assert attrs["url.path"] == "/api/7" and attrs["http.response.status_code"] == 200
    assert attrs["kairos.request_id"] == "rid-1" and attrs["kairos.backend"] == "http://10.0.0.5:9000"
    assert attrs["server.address"] == "gw.example" and attrs["client.address"] == "10.1.1.1"
    # Retries are siblings under the server span, numbered.
    for n, client in enumerate(clients):
        assert client.parent.span_id == server.context.span_id
        assert client.attributes["kairos.attempt"] == n
        assert client.attributes["server.address"] == "10.0.0.5"
        assert client.attributes["url.full"] == "http://10.0.0.5:9000/7"  # no query: values may be secrets
    assert clients[0].status.status_code == StatusCode.ERROR and clients[0].attributes["http.response.status_code"] == 503
    assert clients[1].attributes["http.request.resend_count"] == 1
    # Each attempt forwarded its own span as the upstream's parent, and the caller's tracestate.
    for headers, client in zip(forwarded, clients):
        trace_id, span_id, flags = parse_traceparent(headers[b"traceparent"])
        assert trace_id == TRACE_ID and span_id == format(client.context.span_id, "016x") and int(flags, 16) & 1
        assert headers[b"tracestate"] == b"vendor=abc"
    assert s["kairos.trace_id"] == TRACE_ID


async def test_unsampled_request_still_forwards_a_new_span_id_and_records_nothing():
    tracer, exporter = make_tracer("parent_based_ratio")
    forwarded: list[dict] = []
    s = scope(incoming(sampled=False))
    await run(Tracing(upstream_app(forwarded=forwarded), tracer, "/api/{id}"), s)
    assert exporter.get_finished_spans() == ()
    trace_id, span_id, flags = parse_traceparent(forwarded[0][b"traceparent"])
    assert trace_id == TRACE_ID and span_id != PARENT_ID and int(flags, 16) & 1 == 0
    assert forwarded[0][b"tracestate"] == b"vendor=abc"
    assert s["kairos.trace_id"] == TRACE_ID


async def test_a_request_without_trace_context_starts_a_trace():
    tracer, exporter = make_tracer()
    s = scope()
    await run(Tracing(upstream_app(), tracer, "/api/{id}"), s)
    (server,) = [sp for sp in exporter.get_finished_spans() if sp.kind == SpanKind.SERVER]
    assert server.parent is None and s["kairos.trace_id"] == format(server.context.trace_id, "032x")


@pytest.mark.parametrize(
    "kind,event",
    [("rate_limit_exceeded", "rate_limited"), ("authentication_error", "auth_refused"),
     ("circuit_open", "circuit_breaker_rejected"), ("forbidden", "ip_refused")],
)
async def test_refusals_become_span_events(kind, event):
    tracer, exporter = make_tracer()

    async def refusing(s, receive, send):
        raise GatewayError(kind, "no")

    with pytest.raises(GatewayError):
        await run(Tracing(refusing, tracer, "/api/{id}"), scope())
    (server,) = exporter.get_finished_spans()
    assert [e.name for e in server.events] == [event]
    assert server.events[0].attributes["kairos.error"] == kind
    assert server.attributes["http.response.status_code"] == GatewayError(kind, "").status


async def test_an_unexpected_error_is_recorded_on_the_span():
    tracer, exporter = make_tracer()

    async def broken(s, receive, send):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await run(Tracing(broken, tracer, "/x"), scope())
    (server,) = exporter.get_finished_spans()
    assert server.status.status_code == StatusCode.ERROR and server.attributes["http.response.status_code"] == 500
    assert server.events[0].name == "exception"


async def test_a_reload_keeps_the_tracer_unless_the_block_changes():
    tracers = Tracers()
    assert tracers.for_config(TracingConfig()) is None
    first = tracers.for_config(TracingConfig(enabled=True, exporter="none"))
    assert first is not None and tracers.for_config(TracingConfig(enabled=True, exporter="none")) is first
    second = tracers.for_config(TracingConfig(enabled=True, exporter="none", ratio=0.5))
    assert second is not first
    assert tracers.for_config(TracingConfig(enabled=True, exporter="none")) is not None
    await tracers.aclose()
    assert tracers.current is None


# ---------------------------------------------------------------------------- export
async def test_spans_leave_the_process_batched_over_otlp_http():
    from otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    try:
        config = TracingConfig(enabled=True, endpoint=receiver.endpoint, sampler="always_on", service_name="edge-gw",
                               headers={"x-api-key": "k-123"})
        tracer = Tracer(config)
        for _ in range(20):
            await run(Tracing(upstream_app(), tracer, "/api/{id}"), scope())
        tracer.flush()
        spans = receiver.wait_for(40)
        tracer.shutdown()
    finally:
        receiver.stop()
    assert len(spans) == 40  # a server and a client span per request
    assert len(receiver.posts) < 20 and max(len(p) for p in receiver.posts) > 1  # batched, not one post per span
    assert {s["resource"]["service.name"] for s in spans} == {"edge-gw"}
    assert all(h["x-api-key"] == "k-123" and h["content-type"] == "application/x-protobuf" for h in receiver.headers)
    servers = [s for s in spans if s["kind"] == 2]
    assert len(servers) == 20 and servers[0]["name"] == "GET /api/{id}"
    assert servers[0]["attributes"]["http.route"] == "/api/{id}"


async def test_a_collector_that_refuses_connections_does_not_stop_requests():
    from tests.conftest import free_port

    config = TracingConfig(enabled=True, endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", sampler="always_on")
    tracer = Tracer(config)
    statuses = []
    for _ in range(300):
        sent = await run(Tracing(upstream_app(), tracer, "/api/{id}"), scope())
        statuses.append(sent[0]["status"])
    assert statuses == [200] * 300  # every request answered; the export fails on the SDK's thread
    threading.Thread(target=tracer.shutdown, daemon=True).start()


def test_the_tracing_layer_exists_only_when_enabled():
    from kairos import create_app

    route = {"external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"],
             "backends": [{"host": "http://127.0.0.1", "port": 9}]}
    off = create_app({"routers": [route]}).state.gateway.runtime.routes[0]
    assert not isinstance(off.pipeline, Tracing) and b"traceparent" not in off.strip_headers
    on = create_app({"tracing": {"enabled": True, "exporter": "none"}, "routers": [route]}).state.gateway
    compiled = on.runtime.routes[0]
    assert isinstance(compiled.pipeline, Tracing)  # first in the chain: it sees every refusal
    assert {b"traceparent", b"tracestate"} <= compiled.strip_headers  # each attempt writes its own


async def test_real_refusals_of_a_compiled_gateway_become_events_on_its_spans():
    """Rate limit, auth and breaker refusals from the real layers and Forwarder (in process)."""
    import httpx
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tests.conftest import free_port
    from kairos import create_app

    closed = free_port()  # nothing listens: every attempt fails to connect
    base = {"internal_path": "/x", "methods": ["GET"], "backends": [{"host": "http://127.0.0.1", "port": closed}]}
    app = create_app({
        "tracing": {"enabled": True, "exporter": "none", "sampler": "always_on"},
        "jwt": {"secret": "s" * 32},
        "routers": [
            dict(base, external_path="/limited", rate_limit={"requests_per_window": 1, "window_duration": 60}),
            dict(base, external_path="/private", auth_required=True),
            dict(base, external_path="/fragile", circuit_breaker={"failure_threshold": 1},
                 backends=[{"host": "http://127.0.0.1", "port": free_port()}]),  # its own breaker
        ],
    })
    gateway = app.state.gateway
    exporter = InMemorySpanExporter()
    gateway.deps.tracers.current.provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            statuses = [(await client.get(path)).status_code for path in ("/limited", "/limited", "/private",
                                                                         "/fragile", "/fragile")]
    finally:
        await gateway.aclose()
    assert statuses == [502, 429, 401, 502, 503]
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [[e.name for e in s.events] for s in servers] == [
        ["gateway_error"], ["rate_limited"], ["auth_refused"], ["gateway_error"], ["circuit_breaker_rejected"]]
    assert servers[0].events[0].attributes["kairos.error"] == "upstream"
    clients = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert len(clients) == 2 and {c.attributes["error.type"] for c in clients} == {"connect"}
    assert all(c.status.status_code == StatusCode.ERROR for c in clients)


def test_a_tracer_compiled_but_never_used_starts_no_export_thread():
    before = {t.name for t in threading.enumerate()}
    tracer = Tracer(TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces"))  # e.g. the admin's dry run
    assert {t.name for t in threading.enumerate()} == before and not tracer.exporting
    tracer.shutdown()


async def test_a_malformed_traceparent_starts_a_new_trace_and_is_not_forwarded():
    tracer, exporter = make_tracer()
    forwarded: list[dict] = []
    await run(Tracing(upstream_app(forwarded=forwarded), tracer, "/api/{id}"),
              scope([(b"traceparent", b"00-not-a-trace-context-01")]))
    (server,) = [sp for sp in exporter.get_finished_spans() if sp.kind == SpanKind.SERVER]
    assert server.parent is None
    trace_id, _, _ = parse_traceparent(forwarded[0][b"traceparent"])
    assert trace_id == format(server.context.trace_id, "032x")
