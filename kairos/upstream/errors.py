"""Transport failures, one kind each; the proxy maps them to 502 `upstream` / 504 `timeout`."""


class UpstreamError(Exception):
    """A transport failure; `kind` is one of connect, connect_timeout, timeout, reset."""

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
