"""The one ordered list of a route's layers, and the function that builds a route's chain from it.

Outermost first: a request meets `ip_rules` first and `forward` last. Each entry
is a factory `(route, deps) -> Wrap | None`:

* `route` is the CompiledRoute being built: `route.config` is its own block,
  `route.policy(key)` the effective value of a policy key (its own, else the
  top-level default), `route.root` the whole config, `route.name` its metrics name;
* `deps` (kairos.deps.LayerDeps) holds the narrow handles: `deps.upstream` (the
  upstream client; `.http` is an httpx.AsyncClient), `deps.edge` (state kept
  across reloads: JWKS, verifiers, rate-limit counters, Redis pools), `deps.clock`;
* it returns None when the route does not use the feature (the route then pays
  nothing for it), else a Wrap: given the next app, the layer around it, usually
  `functools.partial(LayerClass, **settings)`. The layer class receives only its
  own settings and handles, never the Gateway.

A layer that only adds or replaces response headers registers a response-start
hook (kairos.proxy.exchange.on_response_start) instead of wrapping `send`.
Adding a feature = one module exposing one factory + one entry below
(docs/architecture.md, "How to add a layer").

Websocket routes (`"protocol": "websocket"`) get only the entries marked
`websocket=True`: those layers see the upgrade request (a `websocket` scope with
`"method": "GET"`) and must let its messages through untouched. A layer that
reads or rewrites response bodies (compression, cache) has nothing to do on a
WebSocket and stays out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from kairos.cache import cache_layer
from kairos.deps import LayerDeps, Wrap
from kairos.middleware.auth import auth_layer
from kairos.middleware.body_limit import body_limit_layer
from kairos.middleware.compression import compression_layer
from kairos.middleware.cors import cors_layer
from kairos.middleware.ip_rules import ip_rules_layer
from kairos.middleware.ratelimit import ratelimit_layer
from kairos.proxy.forward import forward_layer
from kairos.route import CompiledRoute
from kairos.tracing.layer import tracing_layer
from kairos.transform.layer import transform_layer
from kairos.types import ASGIApp, Receive, Scope, Send
from kairos.websocket.layers import websocket_handshake_layer, websocket_layer

LayerFactory = Callable[[CompiledRoute, LayerDeps], Wrap | None]


class Layer(NamedTuple):
    name: str
    factory: LayerFactory
    websocket: bool = False  # also in websocket routes' chains (see above)


LAYERS: tuple[Layer, ...] = (
    Layer("tracing", tracing_layer),  # the server span; sees every refusal below as an event
    Layer("ip_rules", ip_rules_layer, websocket=True),  # 403 before anything else looks at the request
    Layer("cors", cors_layer, websocket=True),  # preflights answered here, even for unauthenticated clients
    Layer("body_limit", body_limit_layer, websocket=True),  # 413 on the declared length; counts a streamed body
    Layer("websocket_handshake", websocket_handshake_layer, websocket=True),  # websocket routes: Origin 403; JWT from subprotocol/query
    Layer("auth", auth_layer, websocket=True),  # 401; scope["kairos.user"] for the layers below
    Layer("ratelimit", ratelimit_layer, websocket=True),  # 429; after auth, so PerUser sees the verified `sub`
    Layer("compression", compression_layer),  # encodes what the layers below produce, fresh or cached
    Layer("cache", cache_layer),  # answers from its store; records what the layers below return
    Layer("transform", transform_layer),  # request/response rewriting (docs/transformation.md)
    Layer("websocket", websocket_layer, websocket=True),  # ends websocket routes' chains: relays upgrades, plain HTTP 426
    Layer("forward", forward_layer),  # the end of every chain: pick a backend, forward, relay
)


async def _unreachable(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the route's chain has no end: the last layer must answer every request")


def build_chain(route: CompiledRoute, deps: LayerDeps, layers: tuple[Layer, ...] = LAYERS) -> ASGIApp:
    """The route's ASGI chain: every layer whose factory returns a Wrap, in list order."""
    app: ASGIApp = _unreachable
    websocket = route.config.protocol == "websocket"
    for layer in reversed(layers):
        if websocket and not layer.websocket:
            continue
        wrap = layer.factory(route, deps)
        if wrap is not None:
            app = wrap(app)
    return app
