"""Policies only a WebSocket upgrade has; the others (ip rules, JWT, rate limit) are the HTTP layers.

* `OriginCheck`: Cross-Site WebSocket Hijacking. Browsers send cookies with a
  cross-site upgrade and do not apply CORS to it, so a route that trusts cookies
  must check `Origin` itself: 403 `forbidden` for an origin not on the route's
  list (`websocket.allowed_origins`, else the route's CORS origins). A request
  without Origin is not from a browser and is let through.
* `HandshakeToken`: browsers cannot set Authorization on a WebSocket, so when
  `websocket.token_from` allows it the JWT may come in a subprotocol
  (`bearer.<token>`, or the pair `bearer`, `<token>`) or a query parameter. The
  token is moved into an Authorization header for the JWT layer that follows
  and removed from what goes upstream; with the pair form the client is
  accepted with `bearer` when the upstream picks no subprotocol (browsers fail
  a handshake that offered subprotocols and got none back).
"""

from __future__ import annotations

from urllib.parse import unquote

from kairos.errors import GatewayError
from kairos.middleware.cors import CorsPolicy
from kairos.types import ASGIApp, Receive, Scope, Send
from kairos.websocket.settings import WebSocketConfig

SUBPROTOCOL_KEY = "kairos.websocket_subprotocol"  # scope key: subprotocol to accept if the upstream picks none
BEARER = "bearer"


class OriginCheck:
    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            for name, value in scope["headers"]:
                if name == b"origin":
                    if not self.policy.allowed(value):
                        raise GatewayError("forbidden", "WebSocket connections from this origin are not allowed")
                    break
        await self.app(scope, receive, send)


class HandshakeToken:
    def __init__(self, app: ASGIApp, settings: WebSocketConfig) -> None:
        self.app = app
        self.header = "header" in settings.token_from
        self.subprotocol = "subprotocol" in settings.token_from
        self.query = settings.query_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            headers = scope["headers"]
            has_header = any(name == b"authorization" for name, _ in headers)
            token = None
            if self.subprotocol:
                token = self.from_subprotocols(scope)
            if self.query is not None:
                token = self.from_query(scope) or token
            if has_header and not self.header:
                headers = [(n, v) for n, v in headers if n != b"authorization"]
                has_header = False
            if token and not has_header:
                headers = [*headers, (b"authorization", b"Bearer " + token.encode("latin-1"))]
            scope["headers"] = headers
        await self.app(scope, receive, send)

    @staticmethod
    def from_subprotocols(scope: Scope) -> str | None:
        offered = list(scope.get("subprotocols") or ())
        token = None
        kept = []
        i = 0
        while i < len(offered):
            entry = offered[i]
            low = entry.lower()
            if low.startswith(BEARER + ".") and token is None:
                token = entry[len(BEARER) + 1:]
            elif low == BEARER and i + 1 < len(offered) and token is None:
                token = offered[i + 1]
                scope[SUBPROTOCOL_KEY] = entry
                i += 1
            else:
                kept.append(entry)
            i += 1
        scope["subprotocols"] = kept
        return token

    def from_query(self, scope: Scope) -> str | None:
        qs = scope.get("query_string") or b""
        if not qs:
            return None
        token = None
        kept = []
        for part in qs.split(b"&"):
            name, _, value = part.partition(b"=")
            if unquote(name.decode("latin-1")) == self.query:
                token = unquote(value.decode("latin-1"))
            else:
                kept.append(part)
        if token is not None:
            scope["query_string"] = b"&".join(kept)  # the token does not travel on to the upstream's logs
        return token
