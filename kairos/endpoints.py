"""The gateway's own endpoints: /health, /live, /ready, /metrics (served by Starlette)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kairos import __version__
from kairos.errors import error_body, rfc3339_now
from kairos.observability import metrics

if TYPE_CHECKING:
    from kairos.gateway import Gateway


def _json(data: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


def _health_endpoints(gateway: Gateway) -> list[Route]:
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


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (e.g. POST /health -> 405) in the gateway's JSON shape."""
    assert isinstance(exc, HTTPException)
    kind = _HTTP_KINDS.get(exc.status_code, "bad_request")
    body = error_body(kind, str(exc.detail), request.scope.get("kairos.request_id", ""))
    headers = dict(exc.headers or {})
    headers["cache-control"] = "no-store"
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=headers)

