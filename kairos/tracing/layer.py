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

import threading

from kairos.errors import GatewayError
from kairos.tracing.config import TracingConfig
from kairos.tracing.tracer import ERROR, REFUSAL_EVENTS, RequestTrace, Tracer
from kairos.types import ASGIApp, Message, Receive, Scope, Send

# The client's own trace headers are replaced by the attempt's (see RequestTrace.attempt).
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})


class Tracing:
    __slots__ = ("app", "tracer", "route", "names")

    def __init__(self, app: ASGIApp, tracer: Tracer, route: str) -> None:
        self.app = app
        self.tracer = tracer
        self.route = route
        self.names: dict[str, str] = {}

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
                    span.set_status(ERROR)
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


class Tracers:
    """The process's current Tracer, rebuilt only when the `tracing` block changes.

    A replaced provider is shut down (its queue flushed) on a thread of its own,
    so a reload never waits for a slow collector."""

    def __init__(self) -> None:
        self.current: Tracer | None = None

    def for_config(self, config: TracingConfig) -> Tracer | None:
        current = self.current
        if current is not None and current.config == config:
            return current
        self.current = Tracer(config) if config.enabled else None
        if current is not None:
            threading.Thread(target=current.shutdown, name="kairos-tracer-shutdown", daemon=True).start()
        return self.current

    def shutdown(self) -> None:
        if self.current is not None:
            self.current.shutdown()
            self.current = None


def tracing_layer(app: ASGIApp, tracer: Tracer | None, route: str) -> ASGIApp:
    return app if tracer is None else Tracing(app, tracer, route)
