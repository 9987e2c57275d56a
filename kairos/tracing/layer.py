"""The tracing layer: one server span per request, outermost in the route's chain.

Present only when `tracing.enabled` (a route of a config without tracing has no
such layer and pays nothing). It continues the client's W3C trace context,
names the span by the route template (never the raw path), puts the trace in
`scope["kairos.trace"]` for the upstream attempts (each makes a client span
and forwards its own `traceparent`), and `scope["kairos.trace_id"]` for the
access log. Gateway refusals pass through it as `GatewayError`s: they become
span events (breaker, rate limit, auth, IP rules) before the error is answered.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from kairos.errors import GatewayError
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # the SDK is imported only when tracing is enabled (it is an optional extra)
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute
    from kairos.tracing.config import TracingConfig
    from kairos.tracing.tracer import RequestTrace, Tracer

# The client's own trace headers are replaced by each attempt's (RequestTrace.attempt).
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})

# GatewayError kinds that are refusals, as the span event names they become.
REFUSAL_EVENTS = {
    "circuit_open": "circuit_breaker_rejected",
    "no_healthy_backend": "no_healthy_backend",
    "rate_limit_exceeded": "rate_limited",
    "rate_limit_unavailable": "rate_limited",
    "authentication_error": "auth_refused",
    "forbidden": "ip_refused",
}


class Tracing:
    __slots__ = ("app", "tracer", "route", "names", "error")

    def __init__(self, app: ASGIApp, tracer: Tracer, route: str) -> None:
        self.app = app
        self.tracer = tracer
        self.route = route
        self.names: dict[str, str] = {}
        self.error = tracer.error_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        name = self.names.get(method)
        if name is None:
            name = self.names[method] = f"{method} {self.route}"
        trace = self.tracer.start(scope, name, None)
        scope["kairos.trace"] = trace
        scope["kairos.trace_id"] = trace.trace_id
        span = trace.span
        if not trace.recording:
            try:
                await self.app(scope, receive, send)
            finally:
                span.end()
            return
        self.describe(trace, scope)
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except GatewayError as exc:
            status = exc.status
            span.add_event(REFUSAL_EVENTS.get(exc.kind, "gateway_error"), {"kairos.error": exc.kind})
            span.set_attribute("error.type", exc.kind)
            raise
        except BaseException as exc:
            status = status or 500
            span.record_exception(exc)
            span.set_attribute("error.type", exc.__class__.__name__)
            raise
        finally:
            if status:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(self.error)
            backend = scope.get("kairos.backend")
            if backend is not None:
                span.set_attribute("kairos.backend", backend)
            span.end()

    def describe(self, trace: RequestTrace, scope: Scope) -> None:
        """HTTP semantic-convention attributes of the server span (sampled requests only)."""
        attributes = {
            "http.request.method": scope["method"],
            "http.route": self.route,
            "kairos.route": self.route,
            "url.path": scope["path"],
            "url.scheme": scope.get("kairos.forwarded_proto") or scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
            "kairos.request_id": scope.get("kairos.request_id", ""),
        }
        client = scope.get("kairos.client_ip") or (scope.get("client") or (None,))[0]
        if client:
            attributes["client.address"] = str(client)
        for key, value in scope["headers"]:
            if key == b"user-agent":
                attributes["user_agent.original"] = value.decode("latin-1")
            elif key == b"host":
                host = value.decode("latin-1")
                host = host[1:host.find("]")] if host.startswith("[") else host.partition(":")[0]
                attributes["server.address"] = host
        trace.span.set_attributes(attributes)


def tracing_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    """First in every route's chain when `tracing.enabled` (top level only); else no layer."""
    tracer = deps.tracers.for_config(route.root.tracing)
    if tracer is None:
        return None
    route.strip_headers = route.strip_headers | TRACE_HEADERS
    return partial(Tracing, tracer=tracer, route=route.name)
