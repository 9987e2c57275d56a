"""Request head limits: too many headers or header bytes (431), an overlong target (414),
two Hosts or an invalid one (400).

uvicorn's httptools parser accepts a 1 MB header block and thousands of headers
(measured, docs/limits.md), so the gateway enforces `server.max_headers` and
`server.max_header_bytes` itself before anything is forwarded, as nginx
(`large_client_header_buffers`) and Envoy (`max_request_headers_kb`,
`max_headers_count`) do. The request target counts against the same byte budget,
as it does in nginx's header buffers; a target that alone exceeds it is 414.

RFC 9112 3.2: a request with more than one Host header, or a Host that is not a
valid host[:port], is answered 400. An upstream, a cache or a virtual-host router
behind the gateway would otherwise pick one of two Hosts, or read `a/b` or
`a b` in its own way.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kairos.errors import send_error
from kairos.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.config.models import ServerConfig
    from kairos.deps import RuntimeSource

# RFC 3986 host (IP-literal, IPv4 or reg-name, percent-encoding allowed) and an optional port.
_VALID_HOSTS: set[bytes] = set()
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


def head_refusal(scope: Scope, server: ServerConfig) -> tuple[str, str] | None:
    """(error kind, message) when the request head breaks a limit or RFC 9112's Host rules, else None."""
    headers = scope["headers"]
    if server.max_headers and len(headers) > server.max_headers:
        return "header_too_large", f"{len(headers)} request headers; at most {server.max_headers} are accepted"
    limit = server.max_header_bytes
    query = scope.get("query_string") or b""
    size = len(scope.get("raw_path") or b"") + (len(query) + 1 if query else 0)
    if limit and size > limit:
        return "uri_too_long", f"the request target is {size} bytes; at most {limit} are accepted"
    host = None
    hosts = 0
    for name, value in headers:
        size += len(name) + len(value)
        if name == b"host":
            hosts += 1
            host = value
    if limit and size > limit:
        return "header_too_large", f"request target and headers total {size} bytes; at most {limit} are accepted"
    if hosts > 1:
        return "bad_request", f"{hosts} Host headers; a request has one"
    if host is not None and host not in _VALID_HOSTS:
        if _HOST.fullmatch(host) is None:
            return "bad_request", "the Host header is not a valid host[:port]"
        if len(_VALID_HOSTS) < 1024:  # a gateway sees a handful of names; the regex runs once for each
            _VALID_HOSTS.add(host)
    return None


class HeaderLimits:
    def __init__(self, app: ASGIApp, source: RuntimeSource) -> None:
        self.app = app
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):  # an upgrade request is checked like any request
            refusal = head_refusal(scope, self.source.runtime.config.server)
            if refusal is not None:
                kind, message = refusal
                await send_error(scope, send, kind, message, [(b"connection", b"close")])
                return
        await self.app(scope, receive, send)
