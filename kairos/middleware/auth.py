"""JWT authentication for routes with `auth_required: true`.

Every method of a protected route needs `Authorization: Bearer <token>`. On
success the verified claims go to scope["kairos.user"], `forward_claims`
headers are set from them (client-sent copies removed first) and, with
`forward_token: false`, the Authorization header is dropped before forwarding.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from kairos.auth.jwt import AuthFailure, JwtVerifier
from kairos.errors import GatewayError
from kairos.observability.logging import log_event
from kairos.observability.metrics import AUTH_FAILURES
from kairos.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.config.models import JwtConfig
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

_CHALLENGE = [(b"www-authenticate", b"Bearer")]
_INVALID = [(b"www-authenticate", b'Bearer error="invalid_token"')]


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
    def __init__(self, app: ASGIApp, verifier: JwtVerifier, jwt_config: JwtConfig, route_name: str) -> None:
        self.app = app
        self.route_name = route_name
        self.verifier = verifier
        self.forward = tuple(
            (claim, header.lower().encode("latin-1")) for claim, header in jwt_config.forward_claims.items()
        )
        drop = {header.lower().encode("latin-1") for header in jwt_config.forward_claims.values()}
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
            scope["headers"] = [(n, v) for n, v in scope["headers"] if n not in drop]
        if self.forward:
            # Not in scope["headers"]: a client's `Connection: X-User-Id` must not be able to
            # remove them. The proxy adds them after its hop-by-hop processing.
            gateway_headers = scope.setdefault("kairos.gateway_headers", [])
            for claim, header in self.forward:
                if claim in claims:
                    gateway_headers.append((header, _header_value(claims[claim])))
        await self.app(scope, receive, send)


def auth_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    """Authenticate when the route needs a token (and a `jwt` block is configured)."""
    jwt_config = route.root.jwt
    if not route.config.auth_required or jwt_config is None:
        return None
    verifier = deps.edge.verifier(jwt_config, deps.upstream.http)
    return partial(Authenticate, verifier=verifier, jwt_config=jwt_config, route_name=route.name)
