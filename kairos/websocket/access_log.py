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
from collections.abc import Callable
from typing import Any

from kairos.observability.logging import access_log_writer, clock, redact_query
from kairos.observability.metrics import WEBSOCKET_UPGRADES
from kairos.types import ASGIApp, Message, Receive, Scope, Send
from kairos.websocket.endpoint import SESSION_KEY, UPSTREAM_STATUS_KEY

UNMATCHED = "unmatched"


class WebSocketAccessLog:
    """Wraps the gateway's endpoint; HTTP scopes pass straight through. `log_on()` says whether
    the access log is switched on in the current config."""

    def __init__(self, app: ASGIApp, log_on: Callable[[], bool]) -> None:
        self.app = app
        self.log_on = log_on
        self.writer = access_log_writer
        self._outcomes: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_watched(message: Message) -> None:
            nonlocal status
            if status == 0:
                kind = message["type"]
                if kind == "websocket.accept":
                    status = 101
                elif kind == "websocket.http.response.start":
                    status = message["status"]
                elif kind == "websocket.close":
                    status = 403  # a close before accept is a refused handshake
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        finally:
            self.record(scope, status or 500, time.perf_counter() - start)

    def record(self, scope: Scope, status: int, duration: float) -> None:
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
        if not self.log_on():
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
