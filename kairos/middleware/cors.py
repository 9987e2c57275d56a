"""CORS, per route (the route's `cors` block, else the top-level one; no block, no layer).

Why not Starlette's CORSMiddleware: it answers a preflight 200 (400 when the
origin is refused, with the allow-* headers still on it), has no origin
patterns other than one free-form regex, and leaves an upstream's own
Access-Control-* headers next to its own. The gateway's contract is different:
every preflight on a CORS route is answered 204 without reaching the upstream,
a refused origin gets the 204 with no CORS headers at all, `https://*.example.com`
patterns, `Vary: Origin` on everything, and the gateway owning the CORS headers
of the route (an upstream's are replaced, never doubled).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from functools import partial

from kairos.config.models import CorsConfig
from kairos.proxy.exchange import on_response_start
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

KEY = "cors"  # CompiledRoute.extras key

_ACAO = b"access-control-allow-origin"
_ACAC = b"access-control-allow-credentials"
_ACEH = b"access-control-expose-headers"
_ACAM = b"access-control-allow-methods"
_ACAH = b"access-control-allow-headers"
_ACMA = b"access-control-max-age"
_OWNED = frozenset({_ACAO, _ACAC, _ACEH, _ACAM, _ACAH, _ACMA})
_VARY = b"vary"
_PREFLIGHT_VARY = (_VARY, b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
_LABELS = r"[a-z0-9-]+(?:\.[a-z0-9-]+)*"


def origin_regex(pattern: str) -> re.Pattern[str]:
    """`https://*.example.com` -> any subdomain (one or more labels) of example.com over https;
    `http://localhost:*` -> any port."""
    port_any = pattern.endswith(":*")
    body = pattern[:-2] if port_any else pattern
    rx = re.escape(body.lower()).replace(r"\*", _LABELS)
    if port_any:
        rx += r":\d{1,5}"
    return re.compile(rx)


class CorsPolicy:
    """One compiled `cors` block."""

    def __init__(self, cfg: CorsConfig) -> None:
        origins = [o.lower() for o in cfg.allowed_origins]
        self.any_origin = "*" in origins
        self.exact = frozenset(o for o in origins if "*" not in o)
        patterns = [origin_regex(o) for o in origins if "*" in o and o != "*"]
        self.pattern = re.compile("|".join(f"(?:{p.pattern})" for p in patterns)) if patterns else None
        self.credentials = cfg.allow_credentials
        # '*' with credentials is a config error, so a wildcard answer can be literal '*'.
        self.literal_star = self.any_origin and not self.credentials
        self.mirror_headers = "*" in cfg.allowed_headers
        common: list[tuple[bytes, bytes]] = []
        if self.credentials:
            common.append((_ACAC, b"true"))
        self.actual_extra = list(common)
        if cfg.expose_headers:
            self.actual_extra.append((_ACEH, ", ".join(cfg.expose_headers).encode("latin-1")))
        self.preflight_extra = [
            *common,
            (_ACAM, ", ".join(cfg.allowed_methods).encode("latin-1")),
            (_ACMA, str(cfg.max_age).encode()),
        ]
        if cfg.allowed_headers and not self.mirror_headers:
            self.preflight_extra.append((_ACAH, ", ".join(cfg.allowed_headers).encode("latin-1")))

    def allowed(self, origin: bytes) -> bool:
        if self.any_origin:
            return True
        o = origin.decode("latin-1").lower()
        if o in self.exact:
            return True
        return self.pattern is not None and self.pattern.fullmatch(o) is not None

    def _allow_origin(self, origin: bytes) -> tuple[bytes, bytes]:
        return (_ACAO, b"*" if self.literal_star else origin)

    async def answer_preflight(self, scope: Scope, send: Send) -> bool:
        """Answer a preflight (OPTIONS with Origin and Access-Control-Request-Method) with 204; False if it is none."""
        if scope["method"] != "OPTIONS":
            return False
        origin = method = req_headers = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                method = value
            elif name == b"access-control-request-headers":
                req_headers = value
        if origin is None or method is None:
            return False
        headers = [_PREFLIGHT_VARY]
        if self.allowed(origin):
            headers.append(self._allow_origin(origin))
            headers.extend(self.preflight_extra)
            if self.mirror_headers and req_headers:
                headers.append((_ACAH, req_headers))
        scope["kairos.cors"] = "preflight"
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return True

    def response_headers(self, headers: list[tuple[bytes, bytes]], origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """The actual response's headers: the upstream's CORS headers out, ours (if allowed) and Vary in."""
        out = []
        vary = None
        for h in headers:
            name = h[0].lower()
            if name in _OWNED:
                continue
            if name == _VARY:
                vary = h[1] if vary is None else vary + b", " + h[1]
                continue
            out.append(h)
        if vary is None:
            out.append((_VARY, b"Origin"))
        elif b"origin" in vary.lower() or vary.strip() == b"*":
            out.append((_VARY, vary))
        else:
            out.append((_VARY, vary + b", Origin"))
        if origin is not None and self.allowed(origin):
            out.append(self._allow_origin(origin))
            out.extend(self.actual_extra)
        return out


class Cors:
    """The per-route layer: preflights answered here, actual responses decorated (a response-start hook)."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy
        self.hook = self.add_headers  # bound once, not per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "OPTIONS" and await self.policy.answer_preflight(scope, send):
            return
        await self.app(scope, receive, on_response_start(scope, send, self.hook))

    def add_headers(self, scope: Scope, message: Message) -> None:
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        message["headers"] = self.policy.response_headers(list(message.get("headers") or ()), origin)


def effective_cors(route: CompiledRoute) -> CorsConfig | None:
    return route.config.cors if route.config.cors is not None else route.root.cors


def cors_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    """The route's CORS layer, if the route (or the top level) configures CORS."""
    cfg = effective_cors(route)
    if cfg is None:
        return None
    policy = CorsPolicy(cfg)
    route.extras[KEY] = policy  # GatewayEndpoint answers preflights on a 405 with it
    return partial(Cors, policy=policy)
