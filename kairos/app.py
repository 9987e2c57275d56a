"""The ASGI application: create_app() wires the layers, GatewayApp dispatches, `app` for uvicorn.

    uvicorn kairos.app:app            # config from KAIROS_CONFIG_PATH (default ./config.json)
    kairos.create_app("config.json")  # an ASGI app, mountable under a prefix in another app

When mounted in a host app that does not run this app's lifespan, the upstream
pool starts on first use; the host closes it with `await kairos_app.state.gateway.aclose()`
(or runs `kairos_app.router.lifespan_context(kairos_app)` inside its own lifespan).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from kairos.config import ConfigError, GatewayConfig, load_config, parse_config
from kairos.endpoints import http_exception, internal_error_handler, own_routes
from kairos.gateway import Gateway, install_signal_handlers
from kairos.middleware.access_log import AccessLog
from kairos.middleware.header_limits import HeaderLimits
from kairos.middleware.request_id import RequestID
from kairos.middleware.security_headers import SecurityHeaders
from kairos.proxy.endpoint import GatewayEndpoint, LastResort
from kairos.proxy.exchange import PROXIED, OpenExchange
from kairos.types import ASGIApp, Receive, Scope, Send

__all__ = ["Gateway", "GatewayApp", "create_app", "install_signal_handlers"]


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
    internal_error = internal_error_handler(gateway)

    app = GatewayApp(
        routes=own_routes(gateway),
        middleware=[
            Middleware(OpenExchange),
            Middleware(RequestID),
            Middleware(SecurityHeaders, source=gateway),
            Middleware(HeaderLimits, source=gateway),
        ],
        exception_handlers={Exception: internal_error, 500: internal_error, HTTPException: http_exception},
        lifespan=lambda app: gateway.lifespan(),
    )
    app.router.redirect_slashes = False
    endpoint = AccessLog(HeaderLimits(GatewayEndpoint(gateway), gateway), gateway)
    app.router.default = endpoint
    # Proxied traffic: the same layers, without Starlette's routing and exception wrappers.
    # OpenExchange's send is the one wrapper a proxied response crosses (header work is hooks).
    app.proxy_stack = OpenExchange(RequestID(SecurityHeaders(LastResort(endpoint), source=gateway)))
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
        if scope["type"] in PROXIED:
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

