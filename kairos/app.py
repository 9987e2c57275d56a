"""The ASGI application: create_app(), the `app` entry point for uvicorn, and lifespan.

    uvicorn kairos.app:app            # config from KAIROS_CONFIG_PATH (default ./config.json)
    kairos.create_app("config.json")  # an ASGI app, mountable under a prefix in another app

When mounted in a host app that does not run this app's lifespan, the upstream
pool starts on first use; the host closes it with `await kairos_app.state.gateway.aclose()`
(or runs `kairos_app.router.lifespan_context(kairos_app)` inside its own lifespan).
"""

from __future__ import annotations
import asyncio
import contextlib
import gc
import os
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from kairos import __version__
from kairos.config import ConfigError, GatewayConfig, load_config, parse_config
from kairos.endpoints import _health_endpoints, _http_exception
from kairos.errors import error_body
from kairos.gateway import Gateway, adopt_server_signals, install_signal_handlers, reload_gateway  # noqa: F401
from kairos.middleware.access_log import AccessLog
from kairos.middleware.header_limits import HeaderLimits
from kairos.middleware.request_id import RequestID
from kairos.middleware.security_headers import SecurityHeaders, headers_for_error
from kairos.observability import metrics
from kairos.observability.logging import access_log_writer, log_event, redact
from kairos.proxy.endpoint import GatewayEndpoint, LastResort
from kairos.types import ASGIApp, Receive, Scope, Send


def create_app(config: GatewayConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> Starlette:
    """Build the gateway's ASGI app from a config object, a dict, or a file path.

    Raises ConfigError (listing every problem) if the config is invalid. With a
    file path, the app's lifespan watches the file and reloads it on change
    (and on SIGHUP when run by `kairos serve` or uvicorn).
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

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from kairos.config.watch import ConfigWatcher

        gateway.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
        await gateway.start()
        # What is alive now (modules, config, compiled routes) lives as long as the process:
        # freezing it keeps it out of every later full collection. Before, a loaded gateway
        # paused ~40 ms for a gen-2 scan every ~0.3 s (p99 67 ms at 64 connections; 14 ms after).
        gc.collect()
        gc.freeze()
        metrics.set_build_info(__version__)
        adopt_server_signals(gateway)
        watcher = ConfigWatcher(gateway) if gateway.config_path else None
        if watcher is not None:
            watcher.start()
        log_event("startup", routes=len(gateway.runtime.routes), version=__version__, pid=os.getpid(),
                  config=gateway.config_path)
        try:
            yield
        finally:
            gateway.draining = True
            if watcher is not None:
                await watcher.stop()
            await gateway.aclose()
            access_log_writer.flush()
            metrics.mark_dead(os.getpid())
            log_event("shutdown", pid=os.getpid())

    app = GatewayApp(
        routes=_health_endpoints(gateway),
        middleware=[
            Middleware(RequestID),
            Middleware(SecurityHeaders, gateway=gateway),
            Middleware(HeaderLimits, gateway=gateway),
        ],
        exception_handlers={Exception: internal_error, 500: internal_error, HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    endpoint = AccessLog(HeaderLimits(GatewayEndpoint(gateway), gateway), gateway)
    app.router.default = endpoint
    # Proxied traffic: the same layers, without Starlette's routing and exception wrappers.
    app.proxy_stack = RequestID(SecurityHeaders(LastResort(endpoint, gateway), gateway=gateway))
    app.state.gateway = gateway
    return app


OWN_PATHS = frozenset(("/health", "/live", "/ready", "/metrics"))


class GatewayApp(Starlette):
    """Starlette serves the gateway's own endpoints and the lifespan; everything else
    (the proxied traffic) goes straight to `proxy_stack`, skipping Starlette's
    ServerErrorMiddleware, ExceptionMiddleware and route scan, which were a measurable
    share of each proxied request (docs/performance.md)."""

    proxy_stack: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path")
            if root and path.startswith(root):
                path = path[len(root):]
            if path not in OWN_PATHS:
                scope["app"] = self
                await self.proxy_stack(scope, receive, send)
                return
        await super().__call__(scope, receive, send)



def _app_from_environment() -> Starlette:
    from kairos.observability.logging import configure_logging

    try:
        app = create_app(None)
        configure_logging(app.state.gateway.config.logging.level)
        return app
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

