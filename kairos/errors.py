"""The JSON errors the gateway itself produces, and the one function that sends them.

Shape as in kairos-rs: {"error", "type", "request_id", "timestamp"}. An upstream's
own error responses are never rewritten; only what kairos decides goes through here.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from kairos.types import Scope, Send

STATUS = {
    "route_not_found": 404,
    "method_not_allowed": 405,
    "bad_request": 400,
    "payload_too_large": 413,
    "header_too_large": 431,
    "uri_too_long": 414,
    "authentication_error": 401,
    "rate_limit_exceeded": 429,
    "upstream": 502,
    "timeout": 504,
    "circuit_open": 503,
    "no_healthy_backend": 503,
    "upstream_overloaded": 503,
    "forbidden": 403,
    "rate_limit_unavailable": 503,
    "upgrade_required": 426,
    "too_many_connections": 503,
    "draining": 503,
    "internal": 500,
}


class GatewayError(Exception):
    """Raised inside the gateway to answer with a JSON error of `kind`."""

    def __init__(self, kind: str, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.headers = headers or []

    @property
    def status(self) -> int:
        return STATUS[self.kind]


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_body(kind: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": message, "type": kind, "request_id": request_id, "timestamp": rfc3339_now()})


async def send_error(
    scope: Scope,
    send: Send,
    kind: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer the request with a JSON error (HEAD gets the headers only).

    On a WebSocket upgrade the error is the handshake's HTTP response (the ASGI
    `websocket.http.response` extension); a server without it can only refuse with 403.
    The kind goes into scope["kairos.error"]: the access log writes it and counts it in
    kairos_gateway_errors_total."""
    scope["kairos.error"] = kind
    body = error_body(kind, message, scope.get("kairos.request_id", ""))
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if headers:
        raw.extend(headers)
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await send({"type": "websocket.http.response.start", "status": STATUS[kind], "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": STATUS[kind], "headers": raw})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
