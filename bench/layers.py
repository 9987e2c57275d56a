"""Per-request cost of each gateway layer, in process (no sockets): python bench/layers.py

wrk through a real gateway on this shared machine swings by +-20% between runs,
more than a layer costs, so each layer is also measured here in isolation.

Each layer wraps a no-op app that answers 200 with a small body; the number is
the time per request of (layer + no-op) minus the no-op alone. The access log
writes to /dev/null (fd 1 redirected) so the terminal is not measured.

`--stack` measures the whole proxied path instead: the app's entry down to the
Forwarder, with the upstream client's `request` replaced by an in-memory answer.
It uses only `create_app` and the client's `request`, so it runs against an older
checkout too (`--repo PATH`), for a same-run A/B (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--repo" in sys.argv:
    REPO = os.path.abspath(sys.argv[sys.argv.index("--repo") + 1])
sys.path.insert(0, REPO)

from kairos.app import create_app  # noqa: E402
from kairos.config.models import CorsConfig  # noqa: E402
from kairos.middleware.access_log import AccessLog  # noqa: E402
from kairos.middleware.body_limit import BodyLimit  # noqa: E402
from kairos.middleware.cors import Cors, CorsPolicy  # noqa: E402
from kairos.middleware.security_headers import SecurityHeaders  # noqa: E402

N = 200_000
HEADERS = [(b"host", b"gw"), (b"user-agent", b"bench/1"), (b"accept", b"*/*"), (b"origin", b"https://a.example.com"),
           (b"x-request-id", b"abc")]
START = {"type": "http.response.start", "status": 200}
BODY = {"type": "http.response.body", "body": b'{"ok":true}'}


async def noop(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send(BODY)


async def sink(message):
    pass


async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def run(app, n: int, extra_headers: list | None = None) -> float:
    headers = HEADERS + (extra_headers or [])
    t = time.perf_counter()
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "path": "/api/1", "raw_path": b"/api/1", "query_string": b"a=1",
                 "headers": headers, "client": ("127.0.0.1", 5555), "scheme": "http", "kairos.request_id": "abc",
                 "kairos.client_ip": "127.0.0.1"}
        await app(scope, receive, sink)
    return (time.perf_counter() - t) / n * 1e6


SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"


def edge_layers() -> dict:
    from jose import jwt

    from kairos.middleware.auth import auth_layer
    from kairos.middleware.ratelimit import ratelimit_layer

    def build(factory, gw):  # a factory from kairos/layers.py: (route, deps) -> wrap
        return factory(gw.runtime.routes[0], gw.deps)(noop)

    route = {"external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"], "host": "http://127.0.0.1",
             "port": 9, "auth_required": True}
    layers = {}
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 3600, "iss": "b", "aud": "b"}, SECRET, algorithm="HS256")
    config = {"jwt": {"secret": SECRET, "issuer": "b", "audience": "b"}, "routers": [route]}
    gw = create_app(config).state.gateway
    layers["auth (same token, cached)"] = (build(auth_layer, gw),
                                           [(b"authorization", b"Bearer " + token.encode())])
    for window in ("FixedWindow", "SlidingWindow", "TokenBucket"):
        rl = {"strategy": "PerIP", "requests_per_window": 10**9, "window_duration": 60, "window_type": window}
        gw = create_app({"rate_limit": rl, "routers": [dict(route, auth_required=False)]}).state.gateway
        layers[f"rate limit, memory, {window}"] = (build(ratelimit_layer, gw), [])
    return layers


async def noop_attempting(scope, receive, send):
    """The no-op app doing what the Forwarder does for tracing: one client span per attempt."""
    trace = scope.get("kairos.trace")
    if trace is not None:
        headers: list = []
        span = trace.attempt("GET", "http://127.0.0.1:9", "127.0.0.1", 9, "/1?a=1", headers)
        trace.attempt_done(span, 200)
    await noop(scope, receive, send)


def null_exporter():
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class NullExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    return NullExporter()


def tracing_layers() -> dict:
    """The tracing layer (server span) + one client span, against the same app without tracing."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from kairos.tracing.config import TracingConfig
    from kairos.tracing.layer import Tracing
    from kairos.tracing.tracer import Tracer

    layers = {}
    parent = [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")]
    unsampled = Tracer(TracingConfig(enabled=True, exporter="none", ratio=0.0))
    layers["tracing on, not sampled"] = (Tracing(noop_attempting, unsampled, "/api/{id}"), [])
    layers["tracing on, not sampled, traceparent"] = (Tracing(noop_attempting, unsampled, "/api/{id}"), parent)
    sampled = Tracer(TracingConfig(enabled=True, exporter="none", sampler="always_on"))
    sampled.provider.add_span_processor(BatchSpanProcessor(null_exporter()))
    layers["tracing on, sampled, batch export"] = (Tracing(noop_attempting, sampled, "/api/{id}"), [])
    return layers
# A route with five header edits and a path rewrite (issue 12); a plain route has no layer at all.
TRANSFORM = {
    "headers": [
        {"action": "add", "name": "X-Forwarded-By", "value": "kairos-gateway"},
        {"action": "set", "name": "X-Request-Tag", "value": "{request_id}"},
        {"action": "remove", "name": "Cookie"},
        {"action": "rename", "name": "Accept", "to": "X-Accept"},
        {"action": "replace", "name": "User-Agent", "pattern": "bench/(\\d+)", "replacement": "kairos/$1"},
    ],
    "path": {"pattern": "^/api/(.+)$", "replacement": "/v2/$1"},
}


def transform_layers() -> dict:
    from kairos.routing import PathTemplate
    from kairos.transform.config import RequestTransformation
    from kairos.transform.layer import Transform, configured

    request = RequestTransformation.model_validate(TRANSFORM)
    assert configured(request, None) and not configured(None, None)
    layer = Transform(noop, "/api/{id}", PathTemplate("/{id}", ["id"]), request, None)
    return {"transform: 5 header edits + path rewrite": (layer, [])}


JSON_10K = json.dumps([{"id": i, "name": f"user{i}", "email": f"user{i}@example.com", "active": i % 2 == 0,
                        "score": i * 1.5} for i in range(120)]).encode()[:10240]


async def json_10k(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"10240")]})
    await send({"type": "http.response.body", "body": JSON_10K})


async def cache_and_compression() -> None:
    """Compression per codec of a 10 KiB JSON body (level 6), and a cache hit answering by itself."""
    from kairos.cache import Cache, CachePolicy, CacheStores
    from kairos.config.cache import CacheConfig
    from kairos.config.compression import CompressionConfig
    from kairos.middleware.compression import Compression, CompressionPolicy

    n = 3000
    await run(json_10k, n)
    base = min([await run(json_10k, n) for _ in range(3)])
    for coding in ("gzip", "br", "zstd", "deflate"):
        layer = Compression(json_10k, CompressionPolicy(CompressionConfig(enabled=True, algorithms=[coding])))
        extra = [(b"accept-encoding", coding.encode())]
        await run(layer, n, extra)
        t = min([await run(layer, n, extra) for _ in range(3)])
        print(f"{'compression ' + coding + ', 10 KiB JSON':34s} +{t - base:5.2f} µs/request")
    config = CacheConfig(enabled=True)
    hit = Cache(noop, CachePolicy("/api/{id}", config), *CacheStores().store_for(config, ""))
    await run(hit, 1)  # the one miss; every call after it is a hit
    n = 20_000
    await run(noop, n)
    base = min([await run(noop, n) for _ in range(3)])
    t = min([await run(hit, n) for _ in range(3)])
    print(f"{'cache hit (memory), whole answer':34s} +{t - base:5.2f} µs/request")
    # A hit of the 10 KiB JSON body sent gzip-compressed: the encoded body is kept after the first hit.
    config = CacheConfig(enabled=True)
    hit_json = Cache(json_10k, CachePolicy("/api/{id}", config), *CacheStores().store_for(config, ""))
    both = Compression(hit_json, CompressionPolicy(CompressionConfig(enabled=True, algorithms=["gzip"])))
    extra = [(b"accept-encoding", b"gzip")]
    await run(both, 10, extra)
    t = min([await run(both, n, extra) for _ in range(3)])
    print(f"{'cache hit + gzip, 10 KiB JSON':34s} +{t - base:5.2f} µs/request")


class FakeResponse:
    """What the upstream client returns, answered from memory."""

    def __init__(self) -> None:
        self.status = 200
        self.raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
        self.read_timeout = None
        self._chunks = [b'{"ok":true}']

    async def read(self) -> bytes:
        return self._chunks.pop() if self._chunks else b""

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def fake_request(*args, **kwargs) -> FakeResponse:
    return FakeResponse()


STACK_ROUTE = {"external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"], "host": "http://127.0.0.1",
               "port": 9}
STACKS = {
    "proxied GET, route without policies": {"routers": [STACK_ROUTE]},
    "proxied GET, tracing on, not sampled": {
        "tracing": {"enabled": True, "exporter": "none", "ratio": 0.0}, "routers": [STACK_ROUTE]},
    "proxied GET, tracing on, sampled (batch export)": {
        "tracing": {"enabled": True, "exporter": "none", "sampler": "always_on"}, "routers": [STACK_ROUTE]},
    "proxied GET, cors + rate limit + ip rules": {
        "cors": {"allowed_origins": ["https://*.example.com"]},
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 10**9, "window_duration": 60},
        "ip_allow": ["127.0.0.0/8"],
        "routers": [STACK_ROUTE],
    },
    # Every request after the first answered from the memory cache: no upstream exchange.
    "proxied GET, cache on (every request a hit)": {"cache": {"enabled": True, "ttl_secs": 3600},
                                                    "routers": [STACK_ROUTE]},
    "proxied GET, transformation (5 header edits + path rewrite)": {
        "routers": [dict(STACK_ROUTE, request_transformation=TRANSFORM)],
    },
}


async def run_stack(app, n: int) -> float:
    # CPU time, not wall time: on a shared machine, time spent descheduled is most of the noise.
    t = time.process_time()
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "path": "/api/1", "raw_path": b"/api/1", "query_string": b"a=1",
                 "headers": list(HEADERS), "client": ("127.0.0.1", 5555), "scheme": "http", "root_path": "",
                 "http_version": "1.1", "server": ("127.0.0.1", 5900)}
        await app(scope, receive, sink)
    return (time.process_time() - t) / n * 1e6


async def stacks(n: int) -> None:
    for name, config in STACKS.items():
        try:
            app = create_app(dict(config, logging={"access_log": True}))
        except Exception as exc:  # an older checkout (--repo) without this feature: skip the case
            print(f"{name:44s}    n/a ({exc.__class__.__name__})")
            continue
        app.state.gateway.upstream.request = fake_request
        deps = getattr(app.state.gateway, "deps", None)
        tracer = deps.tracers.current if deps is not None and hasattr(deps, "tracers") else None
        if tracer is not None and tracer.config.sampler == "always_on":
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tracer.provider.add_span_processor(BatchSpanProcessor(null_exporter()))  # the queue, not the network
        await run_stack(app, 5_000)
        t = min([await run_stack(app, n) for _ in range(3)])
        print(f"{name:44s} {t:6.2f} µs/request")  # CPU µs, min of 3 runs


async def main() -> None:
    if "--stack" in sys.argv:
        await stacks(50_000)
        return
    app = create_app({"version": 1, "routers": []})
    gateway = app.state.gateway
    gateway_nolog = create_app({"version": 1, "routers": [], "logging": {"access_log": False}}).state.gateway
    layers = {
        "access log + metrics (log on)": AccessLog(noop, gateway),
        "access log + metrics (log off)": AccessLog(noop, gateway_nolog),
        "security headers (global)": SecurityHeaders(noop, gateway),
        "cors (allowed origin, pattern)": Cors(noop, CorsPolicy(CorsConfig(allowed_origins=["https://*.example.com"]))),
        "body limit (GET, no body)": BodyLimit(noop, 10 * 1024 * 1024),
    }
    await run(noop, 20_000)
    base = min([await run(noop, N) for _ in range(3)])
    print(f"no-op app alone: {base:.2f} µs/request")
    for name, layer in layers.items():
        await run(layer, 20_000)
        t = min([await run(layer, N) for _ in range(3)])
        print(f"{name:34s} +{t - base:5.2f} µs/request")
    for name, (layer, extra) in {**edge_layers(), **transform_layers()}.items():
        await run(layer, 20_000, extra)
        t = min([await run(layer, N, extra) for _ in range(3)])
        print(f"{name:34s} +{t - base:5.2f} µs/request")
    # Tracing off is no layer at all; the attempt's `scope.get("kairos.trace")` is the whole cost.
    base_attempting = min([await run(noop_attempting, N) for _ in range(3)])
    print(f"{'tracing off (no layer)':34s} +{base_attempting - base:5.2f} µs/request")
    for name, (layer, extra) in tracing_layers().items():
        await run(layer, 20_000, extra)
        t = min([await run(layer, N // 4, extra) for _ in range(3)])
        print(f"{name:34s} +{t - base_attempting:5.2f} µs/request (server span + 1 client span)")
    await cache_and_compression()


if __name__ == "__main__":
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)
    try:
        import io
        out = io.StringIO()
        real_stdout, sys.stdout = sys.stdout, out
        asyncio.run(main())
    finally:
        sys.stdout = real_stdout
        os.dup2(saved, 1)
    print(out.getvalue(), end="")
