"""The catch-all endpoint for proxied traffic: match the route, run its chain; and LastResort."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from kairos.errors import GatewayError, send_error
from kairos.middleware.cors import KEY as CORS_KEY
from kairos.observability.logging import log_event, redact
from kairos.proxy.exchange import EXCHANGE, exchange_of
from kairos.routing import MethodNotAllowed, UnsafePath
from kairos.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import CompiledConfig, RuntimeSource


class GatewayEndpoint:
    """The catch-all: match the compiled router, then run the route's own chain (kairos/layers.py)."""

    def __init__(self, source: RuntimeSource) -> None:
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind != "websocket":
                return
            scope["method"] = "GET"  # an upgrade is a GET: routing and the policy layers read the method
        runtime = self.source.runtime  # read once: a reload does not change this request's config
        try:
            # Before matching, so 404s are logged with the client and get HSTS behind a TLS proxy.
            scope["kairos.client_ip"] = runtime.identity.resolve(scope)
            try:
                path = route_path(scope)
                match = runtime.router.match(scope["method"], path)
            except UnsafePath as exc:
                raise GatewayError("bad_request", str(exc)) from None
            if match is None:
                raise GatewayError("route_not_found", f"no route for {scope['method']} {scope['path']}")
            if isinstance(match, MethodNotAllowed):
                await self.method_not_allowed(scope, send, runtime, path, match)
                return
            route = match.target
            if kind == "websocket" and route.config.protocol != "websocket":
                await send({"type": "websocket.close", "code": 1003, "reason": "not a WebSocket route"})
                return
            scope["kairos.route"] = route
            scope["kairos.params"] = match.params
            exchange = scope.get(EXCHANGE)
            mark = len(exchange.hooks) if exchange is not None else 0
            try:
                await route.pipeline(scope, receive, send)
            except BaseException:
                # The route's layers decorate the responses they pass on, not the error
                # answered for them out here (as when each one wrapped `send`).
                if exchange is not None:
                    exchange.drop_hooks_after(mark)
                raise
        except GatewayError as exc:
            # Raised only before the response starts (layers send their own errors after).
            await send_error(scope, send, exc.kind, exc.message, exc.headers)

    @staticmethod
    async def method_not_allowed(scope: Scope, send: Send, runtime: CompiledConfig, path: str, match: MethodNotAllowed) -> None:
        """405, counted under the route whose path matched; a CORS preflight on that route is answered 204.

        (Preflights are OPTIONS requests, and few routes list OPTIONS among their methods.)
        """
        route = None
        wanted = None
        if scope["method"] == "OPTIONS":
            for name, value in scope["headers"]:
                if name == b"access-control-request-method":
                    wanted = value.decode("latin-1").upper()
                    break
        for method in ([wanted] if wanted in match.allow else []) + list(match.allow):
            found = runtime.router.match(method, path)
            if found is not None and not isinstance(found, MethodNotAllowed):
                route = found.target
                break
        if route is not None:
            scope["kairos.route"] = route
            policy = route.extras.get(CORS_KEY)
            if policy is not None and await policy.answer_preflight(scope, send):
                return
        await send_error(
            scope,
            send,
            "method_not_allowed",
            f"method {scope['method']} is not allowed on {scope['path']}",
            [(b"allow", ", ".join(match.allow).encode())],
        )


def route_path(scope: Scope) -> str:
    """The raw (still percent-encoded) request path, relative to where this app is mounted."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class LastResort:
    """A JSON 500 for an unexpected exception before the response started; after that,
    the exception propagates and the server closes the connection (nothing else is honest)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange, send = exchange_of(scope, send)  # it knows whether the response has started
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if exchange.started:
                raise
            rid = scope.get("kairos.request_id", "")
            log_event("internal_error", 40, request_id=rid, error=redact(f"{exc.__class__.__name__}: {exc}"))
            await send_error(scope, send, "internal", "internal gateway error")
