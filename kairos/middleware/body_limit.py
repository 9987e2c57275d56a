"""Request body size limit, per route (`max_body_size`: top-level default 10 MiB, 0 = unlimited).

A declared Content-Length above the limit is answered 413 `payload_too_large`
before a byte of the body is read. A body without Content-Length (chunked) is
counted while it streams to the upstream; at the limit the stream is cut: if
nothing has been sent to the client yet the answer is 413 (the upstream
exchange is aborted), otherwise the connection is closed.

Why not Starlette's RequestBodyLimitMiddleware: it answers in plain text, not
the gateway's JSON error, and keeps per-request state objects for nesting we
do not need; this layer is one header scan for a request without a body.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from kairos.errors import GatewayError
from kairos.proxy.exchange import exchange_of
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

_CLOSE = [(b"connection", b"close")]


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit."""


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> GatewayError:
        # The unread rest of the body makes the connection unusable: close it after the answer.
        return GatewayError("payload_too_large", f"request body exceeds the limit of {self.limit} bytes", list(_CLOSE))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        streamed = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise GatewayError("bad_request", "invalid Content-Length") from None
                if declared > limit:
                    raise self._too_large()
                await self.app(scope, receive, send)  # the server enforces the declared length
                return
            if name == b"transfer-encoding":
                streamed = True
        if not streamed:
            await self.app(scope, receive, send)
            return

        received = 0
        exceeded = False
        exchange, send = exchange_of(scope, send)  # it knows whether the response has started

        async def receive_limited() -> Message:
            nonlocal received, exceeded
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
                if received > limit:
                    exceeded = True
                    scope["kairos.body_limit_exceeded"] = True
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, receive_limited, send)
        except Exception:
            # The upstream exchange failed because we cut the body: that is a 413, not a 502.
            if exceeded and not exchange.started:
                raise self._too_large() from None
            raise


def body_limit_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    limit = route.policy("max_body_size")
    if not limit:
        return None
    return partial(BodyLimit, limit=limit)
