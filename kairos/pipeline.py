"""Each route's own ASGI chain, built once when the config is compiled.

Order (outermost first): ip_rules -> cors -> body_limit -> auth -> ratelimit -> Forwarder.
A layer a route does not configure is simply not in its chain, so it costs
nothing; a per-route override is a different instance of the same layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.config.models import GatewayConfig
from kairos.errors import GatewayError
from kairos.proxy import (
    open_exchange,
    relay_response,
    request_body,
    has_body,
    upstream_failure,
    upstream_headers,
)
from kairos.types import ASGIApp, Receive, Scope, Send
from kairos.upstream.client import UpstreamError

if TYPE_CHECKING:
    from kairos.app import Gateway
    from kairos.runtime import CompiledRoute


class Forwarder:
    """The end of every route's chain: pick a backend, forward, stream the answer back."""

    def __init__(self, route: CompiledRoute, gateway: Gateway) -> None:
        self.route = route
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        backend = route.cluster.balancer.pick(scope)
        if backend is None:
            raise GatewayError("no_healthy_backend", f"no healthy backend for route {route.name}")
        path = route.template.render(scope["kairos.params"])
        qs = scope.get("query_string")
        if qs:
            path = path + "?" + qs.decode("latin-1")
        headers = upstream_headers(scope, backend, route.preserve_host, route.strip_headers)
        body = request_body(receive) if has_body(scope) else None
        scope["kairos.backend"] = backend.address
        try:
            response = await open_exchange(
                self.gateway.upstream, scope, backend, path, headers, body, route.timeout_s, route.client_timeout
            )
        except UpstreamError as exc:
            raise upstream_failure(exc, backend) from None
        scope["kairos.bytes_out"] = await relay_response(scope, send, response)


def build_pipeline(route: CompiledRoute, config: GatewayConfig, gateway: Gateway) -> ASGIApp:
    from kairos.middleware.body_limit import body_limit_layer
    from kairos.middleware.cors import cors_layer
    from kairos.middleware.security_headers import compile_for_route

    # Security headers are applied by the global layer from this compiled set (docs/architecture.md).
    compile_for_route(route, config)
    app: ASGIApp = Forwarder(route, gateway)
    app = body_limit_layer(app, route, config)
    app = cors_layer(app, route, config)
    return app
