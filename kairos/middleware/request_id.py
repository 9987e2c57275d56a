"""X-Request-ID: keep a sane one from the client, otherwise make one; echo it back."""

from __future__ import annotations

import os
import re

from kairos.proxy.exchange import PROXIED, on_response_start
from kairos.types import ASGIApp, Message, Receive, Scope, Send

_SANE = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")
HEADER = b"x-request-id"


def new_request_id() -> str:
    return os.urandom(16).hex()


class RequestID:
    """Puts the id in scope["kairos.request_id"] and on the response; the proxy sends it upstream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in PROXIED:
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == HEADER:
                if _SANE.match(value):
                    rid = value.decode("ascii")
                break
        if rid is None:
            rid = new_request_id()
        scope["kairos.request_id"] = rid
        await self.app(scope, receive, on_response_start(scope, send, add_request_id))


def add_request_id(scope: Scope, message: Message) -> None:
    """Response-start hook: the request's id replaces any X-Request-ID the upstream sent."""
    headers = [h for h in message.get("headers", ()) if h[0].lower() != HEADER]
    headers.append((HEADER, scope["kairos.request_id"].encode("ascii")))
    message["headers"] = headers
