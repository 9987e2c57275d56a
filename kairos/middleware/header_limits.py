"""Request header limits: too many headers, or too many header bytes, is a 431.

uvicorn's httptools parser accepts a 1 MB header block and thousands of headers
(measured, docs/limits.md), so the gateway enforces `server.max_headers` and
`server.max_header_bytes` itself before anything is forwarded, as nginx
(`large_client_header_buffers`) and Envoy (`max_request_headers_kb`,
`max_headers_count`) do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.errors import send_error
from kairos.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import RuntimeSource


class HeaderLimits:
    def __init__(self, app: ASGIApp, source: RuntimeSource) -> None:
        self.app = app
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):  # an upgrade request is checked like any request
            server = self.source.runtime.config.server
            headers = scope["headers"]
            if server.max_headers and len(headers) > server.max_headers:
                scope["kairos.error"] = "header_too_large"
                await send_error(scope, send, "header_too_large",
                                 f"{len(headers)} request headers; at most {server.max_headers} are accepted",
                                 [(b"connection", b"close")])
                return
            if server.max_header_bytes:
                size = 0
                for name, value in headers:
                    size += len(name) + len(value)
                if size > server.max_header_bytes:
                    scope["kairos.error"] = "header_too_large"
                    await send_error(scope, send, "header_too_large",
                                     f"request headers total {size} bytes; at most {server.max_header_bytes} are accepted",
                                     [(b"connection", b"close")])
                    return
        await self.app(scope, receive, send)
