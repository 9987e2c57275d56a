"""JWT authentication for routes with `auth_required: true`.

Every method of a protected route needs `Authorization: Bearer <token>`. On
success the verified claims go to scope["kairos.user"], `forward_claims`
headers are set from them (client-sent copies removed first) and, with
`forward_token: false`, the Authorization header is dropped before forwarding.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from kairos.auth.jwt import AuthFailure, JwtVerifier
from kairos.errors import GatewayError
from kairos.observability.logging import log_event
from kairos.observability.metrics import AUTH_FAILURES
from kairos.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.gateway import Gateway
    from kairos.config.models import GatewayConfig
    from kairos.route import CompiledRoute

_CHALLENGE = [(b"www-authenticate", b"Bearer")]
_INVALID = [(b"www-authenticate", b'Bearer error="invalid_token"')]


def claim_header_names(config: GatewayConfig) -> frozenset[bytes]:
    """Request header names that only the gateway may set (forward_claims targets)."""
    if config.jwt is None:
        return frozenset()
    return frozenset(name.lower().encode("latin-1") for name in config.jwt.forward_claims.values())


def _header_value(value: Any) -> bytes:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        text = ",".join(str(v) for v in value)
    else:
        text = orjson.dumps(value).decode()
    # Never let a claim smuggle a header line.
    return text.replace("\r", " ").replace("\n", " ").replace("\0", " ").encode("utf-8")


class Authenticate:
    def __init__(self, app: ASGIApp, route: CompiledRoute, verifier: JwtVerifier, config: GatewayConfig) -> None:
        jwt_config = config.jwt
        assert jwt_config is not None
        self.app = app
        self.route_name = route.name
        self.verifier = verifier
        self.forward = tuple(
            (claim, header.lower().encode("latin-1")) for claim, header in jwt_config.forward_claims.items()
        )
        drop = set(claim_header_names(config))
        if not jwt_config.forward_token:
            drop.add(b"authorization")
        self.drop = frozenset(drop)
        self._failures: dict[str, Any] = {}

    def _fail(self, reason: str, message: str, token_sent: bool) -> GatewayError:
        child = self._failures.get(reason)
        if child is None:
            child = self._failures[reason] = AUTH_FAILURES.labels(self.route_name, reason)
        child.inc()
        if logging.getLogger("kairos").isEnabledFor(logging.DEBUG):
            log_event("auth_failed", logging.DEBUG, route=self.route_name, reason=reason)
        return GatewayError("authentication_error", message, _INVALID if token_sent else _CHALLENGE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token: str | None = None
        seen = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                if seen:
                    raise self._fail("malformed", "more than one Authorization header", True)
                seen = True
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    raise self._fail("missing", "missing bearer token (Authorization: Bearer <token>)", False)
                token = rest.strip().decode("latin-1")
        if not token:
            raise self._fail("missing", "missing bearer token (Authorization: Bearer <token>)", False)
        try:
            claims = await self.verifier.verify(token)
        except AuthFailure as exc:
            raise self._fail(exc.reason, exc.message, True) from None
        scope["kairos.user"] = claims
        drop = self.drop
        if drop:
            headers = [(n, v) for n, v in scope["headers"] if n not in drop]
            for claim, header in self.forward:
                if claim in claims:
                    headers.append((header, _header_value(claims[claim])))
            scope["headers"] = headers
        await self.app(scope, receive, send)


def auth_layer(route: CompiledRoute, config: GatewayConfig, gateway: Gateway, app: ASGIApp) -> ASGIApp:
    """Wrap `app` in Authenticate when the route needs a token; otherwise return it as is."""
    if not route.config.auth_required or config.jwt is None:
        return app
    verifier = gateway.edge.verifier(config.jwt, gateway)
    return Authenticate(app, route, verifier, config)
