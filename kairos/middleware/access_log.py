"""Access log and request metrics for proxied traffic (everything the catch-all handles).

It wraps GatewayEndpoint only, so /health, /live, /ready and /metrics are never
counted or logged as proxied traffic. Per request: no `send` wrapper (the
request's Exchange records the status and counts the bytes out), a `receive`
wrapper only when there is a body, cached metric children, and (when
`logging.access_log` is on) one header scan and one dict dumped by orjson into
a buffer flushed once per loop iteration. A WebSocket upgrade gets its line when
the connection ends (kairos/websocket/access_log.py adds the relay's fields).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kairos.config.models import HTTP_METHODS
from kairos.observability import metrics
from kairos.observability.logging import access_log_writer, clock, redact_query
from kairos.proxy.exchange import exchange_of
from kairos.types import ASGIApp, Message, Receive, Scope, Send
from kairos.websocket.access_log import connection_fields, count_upgrade

if TYPE_CHECKING:
    from kairos.deps import RuntimeSource

_METHODS = frozenset(HTTP_METHODS)
UNMATCHED = "unmatched"


class AccessLog:
    def __init__(self, app: ASGIApp, source: RuntimeSource) -> None:
        self.app = app
        self.source = source
        self.writer = access_log_writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self.websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        log_on = self.source.runtime.config.logging.access_log
        exchange, send = exchange_of(scope, send)
        bytes_in = 0
        if exchange.has_body:

            async def receive_counted() -> Message:
                nonlocal bytes_in
                message = await receive()
                body = message.get("body")
                if body:
                    bytes_in += len(body)
                return message

            inner_receive: Receive = receive_counted
        else:
            inner_receive = receive

        active = metrics.ACTIVE
        active.inc()
        try:
            await self.app(scope, inner_receive, send)
        finally:
            active.dec()
            duration = time.perf_counter() - start
            route = scope.get("kairos.route")
            route_name = route.name if route is not None else UNMATCHED
            method = scope["method"]
            if method not in _METHODS:
                method = "other"
            status = exchange.status or 500  # nothing was sent: the error middleware answers 500
            metrics.observe_request(route_name, method, status, duration)
            error = scope.get("kairos.error")
            if error is not None:
                metrics.count_gateway_error(route_name, error)
            if log_on:
                fields: dict[str, Any] = {"bytes_in": bytes_in, "bytes_out": exchange.bytes_out}
                if "kairos.upstream_status" in scope:  # a status_code_mapping changed it
                    fields["upstream_status"] = scope["kairos.upstream_status"]
                if "kairos.transform_skipped" in scope:  # why a JSON body was not edited
                    fields["transform_skipped"] = scope["kairos.transform_skipped"]
                self.write(scope, method, route_name, status, duration, fields)

    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An upgrade: logged and counted when the connection ends (kairos/websocket/access_log.py)."""
        start = time.perf_counter()
        log_on = self.source.runtime.config.logging.access_log
        exchange, send = exchange_of(scope, send)
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("kairos.route")
            route_name = route.name if route is not None else UNMATCHED
            status = exchange.status or 500
            count_upgrade(scope, route_name, status)
            error = scope.get("kairos.error")
            if error is not None:
                metrics.count_gateway_error(route_name, error)
            if log_on:
                self.write(scope, "GET", route_name, status, time.perf_counter() - start,
                           connection_fields(scope, status))

    def write(self, scope: Scope, method: str, route_name: str, status: int, duration: float,
              fields: dict[str, Any]) -> None:
        user_agent = b""
        # The client's headers: a request transformation replaces scope["headers"] with the upstream's.
        for name, value in scope.get("kairos.client_headers") or scope["headers"]:
            if name == b"user-agent":
                user_agent = value
        qs = scope.get("query_string")
        record = {
            "timestamp": clock.now(),
            "level": "info",
            "event": "access",
            "request_id": scope.get("kairos.request_id", ""),
            "client_ip": scope.get("kairos.client_ip") or (scope.get("client") or ("",))[0],
            "method": method,
            "path": scope["path"],
            "query": redact_query(qs.decode("latin-1")) if qs else "",
            "route": route_name,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "upstream": scope.get("kairos.backend"),
            **fields,
            "user_agent": user_agent.decode("latin-1"),
        }
        trace_id = scope.get("kairos.trace_id")
        if trace_id is not None:
            record["trace_id"] = trace_id
        error = scope.get("kairos.error")
        if error is not None:
            record["error"] = error
        self.writer.write(record)
