"""One access-log line and the outcome count per WebSocket upgrade, written when it ends.

For an accepted connection that is when it closes: duration, messages and bytes
each way, the close code, its reason and who closed (client, upstream or
gateway). A refused upgrade gets its line at once, with the status the client
saw. Outcomes (`kairos_websocket_upgrades_total{outcome}`): `accepted`,
`upstream_refused` (the upstream answered non-101), or the gateway's error kind
(`forbidden`, `authentication_error`, `rate_limit_exceeded`,
`too_many_connections`, `upstream`, `timeout`, ...).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kairos.observability.logging import access_log_writer, clock, redact_query
from kairos.observability.metrics import WEBSOCKET_UPGRADES
from kairos.proxy.exchange import exchange_of
from kairos.types import ASGIApp, Receive, Scope, Send
from kairos.websocket.endpoint import SESSION_KEY, UPSTREAM_STATUS_KEY

if TYPE_CHECKING:
    from kairos.deps import RuntimeSource

UNMATCHED = "unmatched"


class WebSocketAccessLog:
    """Wraps the gateway's endpoint next to AccessLog (which logs HTTP); HTTP scopes pass
    straight through. The status comes from the request's Exchange."""

    def __init__(self, app: ASGIApp, source: RuntimeSource) -> None:
        self.app = app
        self.source = source
        self.writer = access_log_writer
        self._outcomes: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        log_on = self.source.runtime.config.logging.access_log
        exchange, send = exchange_of(scope, send)
        try:
            await self.app(scope, receive, send)
        finally:
            self.record(scope, exchange.status or 500, time.perf_counter() - start, log_on)

    def record(self, scope: Scope, status: int, duration: float, log_on: bool) -> None:
        route = scope.get("kairos.route")
        route_name = route.name if route is not None else UNMATCHED
        error = scope.get("kairos.error")
        if status == 101:
            outcome = "accepted"
        elif UPSTREAM_STATUS_KEY in scope:
            outcome = "upstream_refused"
        else:
            outcome = error or "refused"
        key = (route_name, outcome)
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = WEBSOCKET_UPGRADES.labels(route_name, outcome)
        child.inc()
        if not log_on:
            return
        qs = scope.get("query_string")
        record: dict[str, Any] = {
            "timestamp": clock.now(),
            "level": "info",
            "event": "access",
            "protocol": "websocket",
            "request_id": scope.get("kairos.request_id", ""),
            "client_ip": scope.get("kairos.client_ip") or (scope.get("client") or ("",))[0],
            "method": "GET",
            "path": scope["path"],
            "query": redact_query(qs.decode("latin-1")) if qs else "",
            "route": route_name,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "upstream": scope.get("kairos.backend"),
            "user_agent": next((v.decode("latin-1") for n, v in scope["headers"] if n == b"user-agent"), ""),
        }
        session = scope.get(SESSION_KEY)
        if session is not None and status == 101:
            ending = session.ending
            record.update(
                messages_in=session.frames_in,
                messages_out=session.frames_out,
                bytes_in=session.bytes_in,
                bytes_out=session.bytes_out,
                close_code=ending.code if ending is not None else None,
                close_reason=ending.reason if ending is not None else None,
                closed_by=ending.closed_by if ending is not None else None,
            )
        if error is not None:
            record["error"] = error
        self.writer.write(record)
