"""Transport failures, one kind each; the proxy maps them to 502 `upstream` / 504 `timeout`."""


class UpstreamError(Exception):
    """A transport failure; `kind` is one of connect, connect_timeout, timeout, reset, protocol,
    overloaded, invalid_request, request_body."""

    kind = "upstream"
    # True when the request provably never reached the upstream (safe to retry any method).
    never_sent = False


class UpstreamConnectError(UpstreamError):
    """Refused, unreachable, unresolvable, or a failed TLS handshake: nothing was sent."""

    kind = "connect"
    never_sent = True


class UpstreamConnectTimeout(UpstreamError):
    kind = "connect_timeout"
    never_sent = True


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamReset(UpstreamError):
    """Reset or closed after the request was (maybe) sent, or the response was cut short."""

    kind = "reset"


class RequestBodyFailed(UpstreamError):
    """The client's side of the body broke (it went away, or a size limit cut it):
    the exchange failed, but not through any fault of the backend."""

    kind = "request_body"


class UpstreamProtocolError(UpstreamReset):
    """The upstream broke HTTP/1.1: invalid framing, an oversized head, an unasked-for 101,
    a status outside 100-599. The connection is closed; the client gets 502 (or an aborted
    response when it already started)."""

    kind = "protocol"


class UpstreamOverloaded(UpstreamError):
    """More requests are already queued for this origin's connections than `max_pending`:
    refused at once (503 upstream_overloaded), nothing was sent."""

    kind = "overloaded"
    never_sent = True


class InvalidUpstreamRequest(UpstreamError):
    """The request cannot be written as HTTP/1.1 (a CR, LF or NUL in a header value, a
    method or header name that is not a token, a bad target). Refused before any
    connection is taken: nothing was sent, and it is not the backend's fault."""

    kind = "invalid_request"
    never_sent = True
