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
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kairos import __version__
from kairos.config import ConfigError, GatewayConfig, load_config, parse_config
from kairos.edge import EdgeState
from kairos.errors import GatewayError, error_body, rfc3339_now, send_error
from kairos.middleware.access_log import AccessLog
from kairos.middleware.cors import KEY as CORS_KEY
from kairos.middleware.header_limits import HeaderLimits
from kairos.middleware.request_id import RequestID
from kairos.middleware.security_headers import SecurityHeaders, headers_for_error
from kairos.observability import metrics
from kairos.observability.logging import access_log_writer, log_event, redact, set_level
from kairos.routing import MethodNotAllowed, UnsafePath
from kairos.runtime import Runtime, compile_runtime
from kairos.types import ASGIApp, Message, Receive, Scope, Send
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

    def reload(self, trigger: str = "signal") -> bool:
        """Re-read the config file, validate and compile it, swap it in; on any problem keep the old one.

        Returns True when the new config is live. Never raises: an operator's typo must not stop the gateway.
        """
        return reload_gateway(self, trigger)

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
            scope["kairos.route"] = route
            scope["kairos.params"] = match.params
            await route.pipeline(scope, receive, send)
        except GatewayError as exc:
            # Raised only before the response starts (layers send their own errors after).
            scope["kairos.error"] = exc.kind
            await send_error(scope, send, exc.kind, exc.message, exc.headers)

    @staticmethod
    async def method_not_allowed(scope: Scope, send: Send, runtime: Runtime, path: str, match: MethodNotAllowed) -> None:
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
        scope["kairos.error"] = "method_not_allowed"
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


class LastResort:
    """A JSON 500 for an unexpected exception before the response started; after that,
    the exception propagates and the server closes the connection (nothing else is honest)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            rid = scope.get("kairos.request_id", "")
            log_event("internal_error", 40, request_id=rid, error=redact(f"{exc.__class__.__name__}: {exc}"))
            await send_error(scope, send, "internal", "internal gateway error")


# --------------------------------------------------------------------------- reload


def _file_digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


def reload_gateway(gateway: Gateway, trigger: str) -> bool:
    path = gateway.config_path
    if path is None:
        log_event("config_reload_skipped", logging.WARNING, trigger=trigger, reason="the app was built from an object, not a file")
        return False
    digest = _file_digest(path)
    if trigger == "file" and digest is not None and digest == getattr(gateway, "config_digest", None):
        return False  # an event without a change (touch, a second event for the same write)
    old = gateway.runtime.config
    try:
        config = load_config(path)
        gateway.swap(config)
    except ConfigError as exc:
        metrics.count_reload("error")
        log_event("config_reload_failed", logging.ERROR, trigger=trigger, source=path,
                  problems=[redact(p) for p in exc.problems], kept="previous config")
        return False
    except Exception as exc:  # a compile step failing must not take the gateway down
        metrics.count_reload("error")
        log_event("config_reload_failed", logging.ERROR, trigger=trigger, source=path,
                  problems=[redact(f"{exc.__class__.__name__}: {exc}")], kept="previous config")
        return False
    gateway.config_digest = digest  # type: ignore[attr-defined]
    metrics.count_reload("success")
    if config.logging.level != old.logging.level:
        set_level(config.logging.level)
    fields: dict[str, Any] = {}
    if config.server != old.server:
        changed = [k for k in type(config.server).model_fields if getattr(config.server, k) != getattr(old.server, k)]
        fields["restart_required_for"] = [f"server.{k}" for k in changed if k in ("host", "port")]
    log_event("config_reloaded", trigger=trigger, source=path, routes=len(gateway.runtime.routes), **fields)
    return True


# --------------------------------------------------------------------------- signals


def install_signal_handlers(gateway: Gateway, server: Any) -> dict[int, Any]:
    """SIGTERM drains (/ready 503 at once, keep serving `server.shutdown_delay_s`, then stop
    accepting and let in-flight requests finish); SIGINT stops at once; SIGHUP reloads.

    `server` is the uvicorn.Server. Returns the previous handlers (to restore). Main thread only.
    """

    def loop() -> asyncio.AbstractEventLoop | None:
        lp = getattr(gateway, "loop", None)
        return lp if lp is not None and not lp.is_closed() else None

    def on_term(sig: int, frame: Any) -> None:
        lp = loop()
        if gateway.draining or lp is None:  # a second SIGTERM, or not started yet: stop now
            gateway.draining = True
            server.handle_exit(sig, frame)
            return
        gateway.draining = True
        delay = gateway.config.server.shutdown_delay_s
        lp.call_soon_threadsafe(
            lambda: log_event("shutdown_started", signal=signal.Signals(sig).name, delay_s=delay,
                              timeout_s=gateway.config.server.shutdown_timeout_s)
        )
        if delay <= 0:
            server.handle_exit(sig, frame)
        else:
            lp.call_soon_threadsafe(lambda: lp.call_later(delay, server.handle_exit, sig, None))

    def on_int(sig: int, frame: Any) -> None:
        gateway.draining = True
        server.handle_exit(sig, frame)

    def on_hup(sig: int, frame: Any) -> None:
        lp = loop()
        if lp is not None:
            lp.call_soon_threadsafe(gateway.reload, "sighup")

    handlers = {signal.SIGTERM: on_term, signal.SIGINT: on_int, signal.SIGHUP: on_hup}
    previous = {}
    for sig, handler in handlers.items():
        previous[sig] = signal.signal(sig, handler)
    gateway.signal_handlers = handlers  # type: ignore[attr-defined]
    return previous


def adopt_server_signals(gateway: Gateway) -> None:
    """Under `uvicorn --workers N` (or plain uvicorn) the server installed its own SIGTERM handler:
    put the draining one in front of it. `kairos serve` (one process) installs ours itself."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    server = getattr(current, "__self__", None)
    if server is None or getattr(current, "__name__", "") != "handle_exit":
        return
    try:
        import uvicorn
    except ImportError:  # pragma: no cover
        return
    if isinstance(server, uvicorn.Server):
        install_signal_handlers(gateway, server)


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
