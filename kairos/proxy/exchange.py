"""One request/response exchange: the facts every layer needs, computed once, and the one
`send` wrapper that runs the response-start hooks.

`Exchange` is opened once per request by the outermost layer (`OpenExchange`)
and kept in `scope["kairos.exchange"]`. Its `send` is the only wrapper a
response crosses for header-only work: at `http.response.start` it records the
status and runs the hook list (request id, security headers, CORS, rate-limit
headers, ...); for body messages it counts the bytes (the access log reads
them). A layer that only adds or replaces response headers registers a hook
with `on_response_start(scope, send, hook)` instead of wrapping `send`.

A layer that must see or change the body (compression, recording a response for
the cache) still wraps `send` itself, like Starlette's GZipMiddleware: hooks are
for headers only. Such a wrapper sits inside the exchange, so the hooks run
after it has seen the start message (docs/architecture.md, "Response-start hooks").

Also here: hop-by-hop filtering in both directions and the has-body rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

from kairos.types import ASGIApp, Message, Receive, Scope, Send
from kairos.upstream.backend import Backend

EXCHANGE = "kairos.exchange"  # scope key
# A WebSocket handshake's response starts with one of these (headers allowed, hooks run).
_WEBSOCKET_STARTS = frozenset({"websocket.accept", "websocket.http.response.start"})
PROXIED = frozenset({"http", "websocket"})  # scope types the proxy path serves

# Called with (scope, the http.response.start message) and may change message["headers"].
StartHook = Callable[[Scope, Message], None]


def has_body(scope: Scope) -> bool:
    """Whether the request carries a body (a non-zero Content-Length, or Transfer-Encoding)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


# The server in front of the client writes these itself (uvicorn: `server`, `date`). As
# nginx does (proxy_hide_header's defaults), an upstream's or a stored response's own are
# not passed on, so the client gets exactly one of each, whoever produced the response.
_WRITTEN_BY_SERVER = frozenset({b"server", b"date"})
_BODILESS_DROP = _WRITTEN_BY_SERVER | {b"content-length"}


def _for_the_server(headers: Iterable[tuple[bytes, bytes]], status: int) -> Iterable[tuple[bytes, bytes]]:
    """The response headers minus Server and Date; a 204 or 304 also loses Content-Length.

    A 204/304 has no body whatever its Content-Length says (RFC 9110 8.6), but uvicorn
    would wait for that many body bytes, raise, and drop the client's connection.
    Names are lowercase here (ASGI; the relay lowercases the upstream's). Usually there
    is nothing to drop (the relay already dropped them): then no new list is made.
    """
    drop = _BODILESS_DROP if status == 304 or status == 204 else _WRITTEN_BY_SERVER
    for name, _ in headers:
        if name in drop:
            return [(n, v) for n, v in headers if n not in drop]
    return headers


class Exchange:
    """The per-request facts and the response-start hook list; `wrap(scope, send)` makes the one wrapper.

    Hooks run innermost first (the reverse of registration), the order the send
    wrappers they replace ran in: a route layer's hook sees the response before the
    global ones (security headers, then the request id) do.

    The Exchange holds no reference to the scope or to its wrapper (both hold it): no
    reference cycle, so a finished request is freed at once, not by the garbage collector.
    """

    __slots__ = ("hooks", "has_body", "started", "status", "bytes_out")

    def __init__(self, scope: Scope) -> None:
        self.hooks: list[StartHook] = []
        self.has_body = has_body(scope)
        self.started = False  # http.response.start has gone out: too late for an error response
        self.status = 0
        self.bytes_out = 0

    def wrap(self, scope: Scope, send: Send) -> Send:
        """The one wrapper: pass it down instead of the server's `send` (made once per request)."""
        hooks = self.hooks

        async def exchange_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start" or (kind in _WEBSOCKET_STARTS and not self.started):
                self.started = True
                self.status = status = message.get("status", 101)  # a WebSocket accept is the 101
                i = len(hooks)
                while i:
                    i -= 1
                    hooks[i](scope, message)
                headers = message.get("headers")
                if headers:
                    message["headers"] = _for_the_server(headers, status)
            elif kind == "websocket.close" and not self.started:
                self.started = True
                self.status = 403  # what servers answer an upgrade closed before it was accepted
            else:
                body = message.get("body")
                if body:
                    self.bytes_out += len(body)
            await send(message)

        return exchange_send

    def drop_hooks_after(self, mark: int) -> None:
        """Forget hooks registered after `mark` (= len(hooks) at some point).

        Used when an exception unwinds out of layers: they decorate the responses they
        pass on, not the error answered for them from outside (as their send wrappers did)."""
        del self.hooks[mark:]


def exchange_of(scope: Scope, send: Send) -> tuple[Exchange, Send]:
    """The request's Exchange and the send to pass on: the existing one, or a new one
    (then its `send` replaces `send`; a layer used on its own, e.g. in a benchmark)."""
    exchange = scope.get(EXCHANGE)
    if exchange is not None:
        return exchange, send
    exchange = scope[EXCHANGE] = Exchange(scope)
    return exchange, exchange.wrap(scope, send)


def on_response_start(scope: Scope, send: Send, hook: StartHook) -> Send:
    """Register `hook` on the request's exchange; returns the send to pass on."""
    exchange, send = exchange_of(scope, send)
    exchange.hooks.append(hook)
    return send


def request_has_body(scope: Scope) -> bool:
    """The has-body fact: the Exchange's (computed once per request), else computed now."""
    exchange = scope.get(EXCHANGE)
    return exchange.has_body if exchange is not None else has_body(scope)


class OpenExchange:
    """The outermost layer (proxied traffic and the gateway's own endpoints alike):
    opens the request's Exchange, whose `send` is the only wrapper the response crosses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in PROXIED:
            await self.app(scope, receive, send)
            return
        exchange = scope[EXCHANGE] = Exchange(scope)
        await self.app(scope, receive, exchange.wrap(scope, send))

# RFC 9110 7.6.1 hop-by-hop headers, never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)


def _connection_listed(value: bytes | str) -> set[str]:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def upstream_headers(
    scope: Scope,
    backend: Backend,
    preserve_host: bool,
    strip: frozenset[bytes],
) -> list[tuple[bytes, bytes]]:
    """The request headers as the upstream should see them (bytes, written as they are).

    Hop-by-hop headers go, `Host` is the backend's (or the client's with
    preserve_host), X-Forwarded-For is appended to, X-Forwarded-Proto and
    X-Forwarded-Host are set, X-Request-ID carries the gateway's id. `strip`
    names headers removed for policy reasons (e.g. claim headers a client must
    not forge).
    """
    out: list[tuple[bytes, bytes]] = []
    dropped = _dropped(strip)
    client_host = b""
    forwarded_for = b""
    listed: set[str] | None = None
    for name, value in scope["headers"]:
        if name in HOP_BY_HOP:
            if name == b"connection":
                listed = _connection_listed(value)
            continue
        if name == b"host":
            client_host = value
            continue
        if name == b"x-forwarded-for":
            forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
            continue
        if name in dropped:
            continue
        out.append((name, value))
    if listed:
        out = [(n, v) for n, v in out if n.decode("latin-1") not in listed]
    # Set by the gateway after hop-by-hop processing: a client's Connection header cannot name them away.
    gateway_headers = scope.get("kairos.gateway_headers")
    if gateway_headers:
        out.extend(gateway_headers)
    peer = scope.get("client")
    if peer:
        peer_ip = peer[0].encode("latin-1")
        forwarded_for = forwarded_for + b", " + peer_ip if forwarded_for else peer_ip
    if forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    proto = scope.get("kairos.forwarded_proto") or scope.get("scheme", "http")
    out.append((b"x-forwarded-proto", proto.encode("latin-1")))
    if client_host:
        out.append((b"x-forwarded-host", client_host))
    out.append((b"host", client_host if preserve_host and client_host else backend.host_header))
    rid = scope.get("kairos.request_id")
    if rid:
        out.append((b"x-request-id", rid.encode("latin-1")))
    return out


_SET_BY_GATEWAY = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"})




def _spellings(name: bytes) -> set[bytes]:
    """Every spelling of `name` with any of its '-' written as '_' (x-user-id, x_user-id, ...)."""
    out = {b""}
    for part in name.split(b"-"):
        out = {prefix + sep + part for prefix in out for sep in ((b"-", b"_") if prefix else (b"",))}
    return out


@lru_cache(maxsize=256)
def _dropped(strip: frozenset[bytes]) -> frozenset[bytes]:
    """Client request headers never forwarded: the gateway sets these itself (`strip`, X-Forwarded-*,
    X-Request-ID), and a look-alike with '_' for '-' of any header it owns (CGI/WSGI upstreams read
    X_User_Id as HTTP_X_USER_ID, the same variable as X-User-Id). Names arrive lowercased."""
    dropped = set(strip | _SET_BY_GATEWAY)
    for name in strip | _SET_BY_GATEWAY | {b"x-forwarded-for", b"host"}:
        if name.count(b"-") <= 8:  # 2**8 spellings at most; a longer name keeps the all-'_' one
            dropped |= _spellings(name) - {name}
        else:
            dropped.add(name.replace(b"-", b"_"))
    dropped.discard(b"x-forwarded-for")  # appended to, not replaced (above)
    return frozenset(dropped)


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones and Server/Date; repeated headers stay separate."""
    out = []
    listed: set[str] | None = None
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                listed = _connection_listed(value)
            continue
        if lname in _WRITTEN_BY_SERVER:
            continue
        out.append((lname, value))
    if listed:
        out = [(n, v) for n, v in out if n.decode("latin-1") not in listed]
    return out


