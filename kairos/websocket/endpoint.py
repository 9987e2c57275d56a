"""The end of a websocket route's chain: refuse plain HTTP, connect upstream, accept, relay.

Backend choice is the route's balancer, its backends' health and breakers, as
for HTTP: a failed connect or handshake counts as a failure, an upstream status
is recorded like an HTTP response's (so 502/503/504 refusals trip the breaker),
and a route's `retry` block retries connection errors (never an upstream's
refusal) on another backend, with its backoff and budget. The backend's
in-flight count spans the whole connection, so least_connections balances open
WebSockets.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from websockets.protocol import State

from kairos.errors import GatewayError
from kairos.observability.metrics import WEBSOCKET_BYTES, WEBSOCKET_MESSAGES
from kairos.proxy.exchange import upstream_headers
from kairos.proxy.forward import Forwarder, upstream_failure
from kairos.types import Receive, Scope, Send
from kairos.upstream.errors import UpstreamError
from kairos.websocket.connections import Connections
from kairos.websocket.handshake import UpstreamRefused, handshake_headers, open_upstream, relay_refusal, upstream_uri
from kairos.websocket.relay import Relay, Session
from kairos.websocket.settings import WebSocketConfig

if TYPE_CHECKING:
    from kairos.route import CompiledRoute

SESSION_KEY = "kairos.websocket"  # scope key: the connection's Session, for the access log
UPSTREAM_STATUS_KEY = "kairos.websocket_refused"  # scope key: the status of an upstream that refused the upgrade
UPGRADE = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]


class WebSocketForwarder:
    """`route` is the CompiledRoute, `connections` the process-wide registry, `http` the
    route's HTTP Forwarder, whose outcome bookkeeping (breaker, outlier detection, upstream
    error counts, the circuit_open / no_healthy_backend answer) the handshake shares."""

    def __init__(self, route: CompiledRoute, settings: WebSocketConfig, connections: Connections, http: Forwarder) -> None:
        self.route = route
        self.name = route.name
        self.settings = settings
        self.connections = connections
        self.http = http
        self.retry = route.retry
        connect_ms = settings.connect_timeout_ms
        self.connect_timeout_s = connect_ms / 1000 if connect_ms else route.connect_timeout_s
        self.idle_s = settings.idle_timeout_ms / 1000 or None
        self.close_timeout_s = settings.close_timeout_ms / 1000
        self.counters = (
            WEBSOCKET_MESSAGES.labels(self.name, "to_upstream"),
            WEBSOCKET_BYTES.labels(self.name, "to_upstream"),
            WEBSOCKET_MESSAGES.labels(self.name, "to_client"),
            WEBSOCKET_BYTES.labels(self.name, "to_client"),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise GatewayError("upgrade_required", f"{self.name} is a WebSocket endpoint: send an Upgrade request", UPGRADE)
        connections = self.connections
        if connections.draining:
            raise GatewayError("draining", "the gateway is shutting down", [(b"retry-after", b"1")])
        limit = self.settings.max_connections
        if limit and connections.count(self.name) >= limit:
            raise GatewayError(
                "too_many_connections", f"route {self.name} has its {limit} WebSocket connections open",
                [(b"retry-after", b"1")],
            )
        # The slot is taken before connecting, so concurrent upgrades cannot overshoot max_connections.
        session = Session(self.name)
        connections.add(session)
        scope[SESSION_KEY] = session
        try:
            if (await receive())["type"] != "websocket.connect":
                return  # the client left before its handshake was answered
            await self.proxy(scope, receive, send, session)
        finally:
            connections.discard(session)
            session.done.set()

    async def proxy(self, scope: Scope, receive: Receive, send: Send, session: Session) -> None:
        opened = await self.connect(scope)
        if isinstance(opened, UpstreamRefused):
            scope[UPSTREAM_STATUS_KEY] = opened.status
            await relay_refusal(scope, send, opened)
            return
        upstream, backend = opened
        try:
            accept: dict[str, Any] = {"type": "websocket.accept"}
            subprotocol = upstream.subprotocol or scope.get("kairos.websocket_subprotocol")
            if subprotocol:
                accept["subprotocol"] = subprotocol
            if self.settings.compression:
                accept["kairos.compression"] = True  # honoured by kairos.websocket.protocol (kairos serve)
            session.started = session.last_activity = time.monotonic()
            await send(accept)
            relay = Relay(
                session, receive, send, upstream, self.settings.max_message_bytes, self.idle_s,
                self.close_timeout_s, self.counters,
            )
            await relay.run()
        finally:
            backend.in_flight -= 1
            if upstream.state is not State.CLOSED:
                upstream.transport.abort()

    # ------------------------------------------------------------------ the upstream handshake
    async def connect(self, scope: Scope) -> Any:
        """(upstream connection, backend), or an UpstreamRefused to relay; raises GatewayError."""
        route = self.route
        http = self.http
        policy = self.retry
        target = http.target(scope)
        subprotocols = scope.get("subprotocols") or None
        attempt = 0
        exclude = -1
        holding_retry = False
        if policy is not None:
            policy.budget.requests += 1
        try:
            while True:
                # Read per attempt: DNS discovery replaces the balancer (with its members) as a whole.
                balancer = http.cluster.balancer
                i = balancer.pick_index(scope, exclude)
                if i < 0:
                    raise http.unavailable()
                backend = balancer.backends[i]
                breaker = balancer.breakers[i]
                scope["kairos.backend"] = backend.address
                headers = upstream_headers(scope, backend, route.preserve_host, route.strip_headers)
                authority = backend.netloc
                if route.preserve_host:
                    authority = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"host"), authority)
                uri = upstream_uri(backend.scheme == "https", authority, target)
                gen = breaker.acquire()
                backend.in_flight += 1
                try:
                    upstream = await open_upstream(
                        uri, backend.connect_host, backend.port, handshake_headers(headers), subprotocols,
                        self.connect_timeout_s, self.settings.max_message_bytes, self.close_timeout_s,
                    )
                except UpstreamRefused as refused:
                    backend.in_flight -= 1
                    http.answered(backend, breaker, gen, refused.status)
                    return refused
                except UpstreamError as exc:
                    backend.in_flight -= 1
                    http.failed(backend, breaker, gen, exc)
                    if holding_retry:
                        policy.budget.release()
                        holding_retry = False
                    if policy is None or not policy.on_connection_error or attempt >= policy.max_retries:
                        raise upstream_failure(exc, backend, scope) from None
                    if not policy.budget.try_acquire():
                        raise upstream_failure(exc, backend, scope) from None
                    holding_retry = True
                    policy.counters[exc.kind].inc()
                    attempt += 1
                    exclude = i
                    await asyncio.sleep(policy.delay(attempt - 1))
                    continue
                except BaseException:
                    backend.in_flight -= 1
                    breaker.release(gen)
                    raise
                http.answered(backend, breaker, gen, 101)
                return upstream, backend
        finally:
            if policy is not None:
                policy.budget.requests -= 1
                if holding_retry:
                    policy.budget.release()
