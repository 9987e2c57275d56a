"""The gateway's own endpoints (/health, /live, /ready, /metrics) and Starlette's error
handlers for them, in the gateway's JSON error shape. Served by Starlette (app.py)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kairos import __version__
from kairos.errors import error_body, rfc3339_now
from kairos.middleware.security_headers import headers_for_error
from kairos.observability import metrics
from kairos.observability.logging import log_event, redact

if TYPE_CHECKING:
    from kairos.gateway import Gateway


def _json(data: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def own_routes(gateway: Gateway) -> list[Route]:
    def status_body(status: str) -> dict[str, Any]:
        return {
            "status": status,
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - gateway.started_at, 3),
            "timestamp": rfc3339_now(),
        }

    async def health(request: Request) -> Response:
        return _json(status_body("healthy"))

    async def live(request: Request) -> Response:
        return _json(status_body("alive"))

    async def ready(request: Request) -> Response:
        if gateway.draining:
            return _json(status_body("draining"), 503)
        if not gateway.upstream.started:
            return _json(status_body("starting"), 503)
        return _json(status_body("ready"))

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})

    methods = ["GET", "HEAD"]
    return [
        Route("/health", health, methods=methods),
        Route("/live", live, methods=methods),
        Route("/ready", ready, methods=methods),
        Route("/metrics", metrics_endpoint, methods=methods),
    ]


_HTTP_KINDS = {404: "route_not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (e.g. POST /health -> 405) in the gateway's JSON shape."""
    assert isinstance(exc, HTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "bad_request")
    body = error_body(kind, str(exc.detail), request.scope.get("kairos.request_id", ""))
    headers = dict(exc.headers or {})
    headers["cache-control"] = "no-store"
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=headers)


def internal_error_handler(gateway: Gateway) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def internal_error(request: Request, exc: Exception) -> Response:
        """Last resort: a JSON 500, never a traceback (the traceback goes to the log).

        This handler runs outside the middleware stack, so it adds the request id and
        the security headers itself.
        """
        rid = request.scope.get("kairos.request_id", "")
        log_event("internal_error", 40, request_id=rid, error=redact(f"{exc.__class__.__name__}: {exc}"))
        body = error_body("internal", "internal gateway error", rid)
        response = Response(body, status_code=500, media_type="application/json", headers={"x-request-id": rid})
        for name, value in headers_for_error(gateway, request.scope):
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        return response

    return internal_error
