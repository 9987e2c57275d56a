"""The websocket entries of the layer list (kairos/layers.py): two factories, because a
websocket route needs work on both sides of the shared policy layers.

* `websocket_handshake_layer`, before `auth`: the Origin check (403) and, where
  `websocket.token_from` allows it, the JWT moved from a subprotocol or query
  parameter into the Authorization header the `auth` layer reads.
* `websocket_layer`, before `forward`: ends a websocket route's chain with the
  WebSocketForwarder (upgrades relayed, plain HTTP answered 426); HTTP routes
  do not get it.

Between them the route's ip_rules, cors, body_limit, auth and ratelimit layers
run on the upgrade request exactly as on HTTP (the endpoint gives a websocket
scope `"method": "GET"`): every upgrade attempt is authenticated and counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.config.models import CorsConfig
from kairos.middleware.cors import CorsPolicy, effective_cors
from kairos.proxy.forward import Forwarder
from kairos.types import ASGIApp
from kairos.websocket.endpoint import WebSocketForwarder
from kairos.websocket.policies import HandshakeToken, OriginCheck
from kairos.websocket.settings import WebSocketConfig

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute


def _origins(route: CompiledRoute, settings: WebSocketConfig) -> list[str] | None:
    if settings.allowed_origins is not None:
        return settings.allowed_origins
    cors = effective_cors(route)
    return cors.allowed_origins if cors is not None else None


def websocket_handshake_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    if route.config.protocol != "websocket":
        return None
    settings: WebSocketConfig = route.policy("websocket")
    origins = _origins(route, settings)
    policy = CorsPolicy(CorsConfig(allowed_origins=origins)) if origins is not None else None
    lift_token = route.config.auth_required and route.root.jwt is not None and settings.token_from != ["header"]
    if policy is None and not lift_token:
        return None

    def wrap(app: ASGIApp) -> ASGIApp:
        if lift_token:
            app = HandshakeToken(app, settings)
        if policy is not None:
            app = OriginCheck(app, policy)
        return app

    return wrap


def websocket_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    if route.config.protocol != "websocket":
        return None
    settings: WebSocketConfig = route.policy("websocket")
    forwarder = WebSocketForwarder(route, settings, deps.websockets, Forwarder(route, deps.upstream))
    return lambda _forward: forwarder  # the end of a websocket route's chain
