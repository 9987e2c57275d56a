"""Security response headers on every response the gateway sends.

One layer wraps the whole app (see docs/architecture.md, "Security headers"):
at `http.response.start` it takes the header set of the matched route
(`scope["kairos.route"].extras["security_headers"]`, compiled with the route)
or, when no route matched (404, health, metrics), the global set of the
current config. A route's override therefore wins for that route, the
gateway's own errors get the headers too, and no per-route layer is needed.

Strict-Transport-Security is added only when the request arrived over HTTPS
or a trusted proxy said `X-Forwarded-Proto: https`
(`scope["kairos.forwarded_proto"]`, set by kairos.clientip for trusted peers only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kairos.config.models import GatewayConfig, SecurityHeadersConfig
from kairos.proxy.exchange import on_response_start
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import RuntimeSource
    from kairos.route import CompiledRoute

KEY = "security_headers"  # CompiledRoute.extras key

DEFAULT_HEADERS: dict[str, str] = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
    "content-security-policy": "default-src 'self'",
    "permissions-policy": "geolocation=(), microphone=(), camera=()",
}
HSTS = b"strict-transport-security"
_MISSING: Any = object()


class HeaderSet:
    """A compiled, effective set of security headers."""

    __slots__ = ("plain", "with_hsts", "names", "override")

    def __init__(self, headers: dict[str, str], hsts: str | None, override: bool) -> None:
        self.plain: tuple[tuple[bytes, bytes], ...] = tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
        )
        extra = ((HSTS, hsts.encode("latin-1")),) if hsts else ()
        self.with_hsts = self.plain + extra
        self.names = frozenset(n for n, _ in self.with_hsts)
        self.override = override

    def apply(self, scope: Scope, message: Message) -> None:
        add = self.with_hsts if (scope.get("scheme") == "https" or scope.get("kairos.forwarded_proto") == "https") else self.plain
        if not add:
            return
        headers = list(message.get("headers") or ())
        names = self.names
        present: set[bytes] | None = None
        for name, _ in headers:
            lname = name.lower()
            if lname in names:
                if present is None:
                    present = set()
                present.add(lname)
        if present is None:
            headers.extend(add)
        elif self.override:
            headers = [h for h in headers if h[0].lower() not in names]
            headers.extend(add)
        else:  # a header the upstream already set is left alone
            headers.extend(h for h in add if h[0] not in present)
        message["headers"] = headers


def effective(global_cfg: SecurityHeadersConfig, route_cfg: SecurityHeadersConfig | None = None) -> HeaderSet | None:
    """Defaults <- global block <- route block (a route key left out inherits the global one)."""

    def pick(name: str) -> Any:
        if route_cfg is not None and name in route_cfg.model_fields_set:
            return getattr(route_cfg, name)
        return getattr(global_cfg, name)

    if not pick("enabled"):
        return None
    merged = dict(DEFAULT_HEADERS)
    for block in (global_cfg, route_cfg):
        if block is None:
            continue
        for name, value in block.headers.items():
            lname = name.lower()
            if lname == HSTS.decode():
                continue  # `hsts` is its own key (validated)
            if value is None:
                merged.pop(lname, None)
            else:
                merged[lname] = value
    return HeaderSet(merged, pick("hsts"), pick("override_upstream"))


def compile_for_route(route: CompiledRoute) -> None:
    """Store the route's effective set in its extras (None: headers switched off for it)."""
    route.extras[KEY] = effective(route.root.security_headers, route.config.security_headers)


class SecurityHeaders:
    """The global layer: wraps the whole app; its work is one response-start hook."""

    def __init__(self, app: ASGIApp, source: RuntimeSource) -> None:
        self.app = app
        self.source = source
        self._config: GatewayConfig | None = None
        self._global: HeaderSet | None = None
        self.hook = self.add_headers  # bound once, not per request

    def global_set(self) -> HeaderSet | None:
        config = self.source.runtime.config
        if config is not self._config:  # compiled once per loaded config
            self._global = effective(config.security_headers)
            self._config = config
        return self._global

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, on_response_start(scope, send, self.hook))

    def add_headers(self, scope: Scope, message: Message) -> None:
        """Response-start hook: the matched route's set, else the global one."""
        route = scope.get("kairos.route")
        hs = route.extras.get(KEY, _MISSING) if route is not None else _MISSING
        if hs is _MISSING:
            hs = self.global_set()
            if hs is not None and hs.with_hsts is not hs.plain and "kairos.client_ip" not in scope:
                # Not proxied (health, metrics): resolve X-Forwarded-Proto from a trusted peer.
                scope["kairos.client_ip"] = self.source.runtime.identity.resolve(scope)
        if hs is not None:
            hs.apply(scope, message)


def headers_for_error(source: RuntimeSource, scope: Scope) -> list[tuple[bytes, bytes]]:
    """The global set as a header list, for responses built outside the layer (the last-resort 500)."""
    hs = effective(source.runtime.config.security_headers)
    if hs is None:
        return []
    message: Message = {"type": "http.response.start", "headers": []}
    hs.apply(scope, message)
    return list(message["headers"])
