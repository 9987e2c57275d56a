"""The ASGI application: create_app(), the `app` entry point for uvicorn, and lifespan.

    uvicorn kairos.app:app            # config from KAIROS_CONFIG_PATH (default ./config.json)
    kairos.create_app("config.json")  # an ASGI app, mountable under a prefix in another app

When mounted in a host app that does not run this app's lifespan, the upstream
pool starts on first use; the host closes it with `await kairos_app.state.gateway.aclose()`
(or runs `kairos_app.router.lifespan_context(kairos_app)` inside its own lifespan).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kairos import __version__
from kairos.config import ConfigError, GatewayConfig, load_config, parse_config
from kairos.edge import EdgeState
from kairos.errors import GatewayError, error_body, rfc3339_now, send_error
from kairos.middleware.request_id import RequestID
from kairos.observability.logging import log_event
from kairos.routing import MethodNotAllowed, UnsafePath
from kairos.runtime import Runtime, compile_runtime
from kairos.types import Receive, Scope, Send
from kairos.upstream.client import UpstreamClient
from kairos.upstream.cluster import forget_backends
from kairos.upstream.health import HealthSupervisor


class Gateway:
    """The live state of one gateway process: the current Runtime and the upstream pool."""

    def __init__(self, config: GatewayConfig, config_path: str | None = None) -> None:
        self.config_path = config_path
        self.upstream = UpstreamClient()
        self.started_at = time.monotonic()
        self.draining = False
        # Active health checks: background probe loops, started with the app.
        self.health = HealthSupervisor()
        self.health_running = False
        self.edge = EdgeState()  # JWKS, verified tokens, rate-limit counters: kept across reloads
        self.runtime: Runtime = compile_runtime(config, self)
        self.edge.prune()

    @property
    def config(self) -> GatewayConfig:
        return self.runtime.config

    def swap(self, config: GatewayConfig) -> Runtime:
        """Compile `config` completely, then replace the running one in one assignment."""
        previous = self.runtime
        try:
            runtime = compile_runtime(config, self, previous=previous)
        except BaseException:
            self.edge.prune(keep_all=True)
            raise
        self.runtime = runtime
        forget_backends(set(previous.backends) - set(runtime.backends))
        if self.health_running:
            # Unchanged probes keep running; changed ones restart; removed ones stop.
            self.health.sync(runtime.health_checks, self.upstream.http)
        for backend in self.edge.prune():
            _close_later(backend.aclose())
        return runtime

    async def start(self) -> None:
        await self.upstream.start()
        await self.edge.start()
        self.health.sync(self.runtime.health_checks, self.upstream.http)
        self.health_running = True

    async def aclose(self) -> None:
        self.health_running = False
        await self.health.aclose()
        await self.edge.aclose()
        await self.upstream.aclose()


def _close_later(coro: Any) -> None:
    """Close a resource the new config no longer uses, without holding up the swap."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        coro.close()
        return
    task = loop.create_task(coro)
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


_CLOSING: set[Any] = set()


class GatewayEndpoint:
    """The catch-all: match the compiled router, then run the route's own pipeline."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003, "reason": "websocket proxying is not supported yet"})
            return
        runtime = self.gateway.runtime  # read once: a reload does not change this request's config
        try:
            try:
                match = runtime.router.match(scope["method"], route_path(scope))
            except UnsafePath as exc:
                raise GatewayError("bad_request", str(exc)) from None
            if match is None:
                raise GatewayError("route_not_found", f"no route for {scope['method']} {scope['path']}")
            if isinstance(match, MethodNotAllowed):
                raise GatewayError(
                    "method_not_allowed",
                    f"method {scope['method']} is not allowed on {scope['path']}",
                    [(b"allow", ", ".join(match.allow).encode())],
                )
            route = match.target
            scope["kairos.client_ip"] = runtime.identity.resolve(scope)
            scope["kairos.route"] = route
            scope["kairos.params"] = match.params
            await route.pipeline(scope, receive, send)
        except GatewayError as exc:
            # Raised only before the response starts (layers send their own errors after).
            scope["kairos.error"] = exc.kind
            await send_error(scope, send, exc.kind, exc.message, exc.headers)


def route_path(scope: Scope) -> str:
    """The raw (still percent-encoded) request path, relative to where this app is mounted."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _json(data: Mapping[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


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
        return _json(status_body("ready"))

    methods = ["GET", "HEAD"]
    return [
        Route("/health", health, methods=methods),
        Route("/live", live, methods=methods),
        Route("/ready", ready, methods=methods),
    ]


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Last resort: a JSON 500, never a traceback (the traceback goes to the log)."""
    rid = request.scope.get("kairos.request_id", "")
    log_event("internal_error", 40, request_id=rid, error=f"{exc.__class__.__name__}: {exc}")
    body = error_body("internal", "internal gateway error", rid)
    return Response(body, status_code=500, media_type="application/json", headers={"x-request-id": rid})


def create_app(config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> Starlette:
    """Build the gateway's ASGI app from a config object, a dict, or a file path.

    Raises ConfigError (listing every problem) if the config is invalid.
    """
    config_path: str | None = None
    if config is None or isinstance(config, (str, os.PathLike)):
        config_path = str(config) if config is not None else None
        cfg = load_config(config_path)
        config_path = config_path or os.environ.get("KAIROS_CONFIG_PATH", "./config.json")
    elif isinstance(config, GatewayConfig):
        cfg = config
    else:
        cfg = parse_config(config)
    gateway = Gateway(cfg, config_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        log_event("startup", routes=len(gateway.runtime.routes), version=__version__)
        try:
            yield
        finally:
            gateway.draining = True
            await gateway.aclose()
            log_event("shutdown")

    app = Starlette(
        routes=_health_endpoints(gateway),
        middleware=[Middleware(RequestID)],
        exception_handlers={Exception: _internal_error, 500: _internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.router.default = GatewayEndpoint(gateway)
    app.state.gateway = gateway
    return app


def _app_from_environment() -> Starlette:
    try:
        return create_app(None)
    except ConfigError as exc:
        print(f"kairos: invalid config {exc.source or ''}", file=sys.stderr)
        for line in exc.problems:
            print(f"  - {line}", file=sys.stderr)
        raise SystemExit(1) from None


def __getattr__(name: str) -> Any:
    # `uvicorn kairos.app:app`: the app is built on first access, from KAIROS_CONFIG_PATH.
    if name == "app":
        app = _app_from_environment()
        globals()["app"] = app
        return app
    raise AttributeError(name)
