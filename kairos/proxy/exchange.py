"""The header facts of one proxied exchange: hop-by-hop filtering both ways, has-body."""

from __future__ import annotations

from kairos.types import Scope
from kairos.upstream.backend import Backend

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
        if name in _SET_BY_GATEWAY or name in strip:
            continue
        out.append((name, value))
    if listed:
        out = [(n, v) for n, v in out if n.decode("latin-1") not in listed]
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


def has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones; repeated headers stay separate."""
    out = []
    listed: set[str] | None = None
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                listed = _connection_listed(value)
            continue
        out.append((lname, value))
    if listed:
        out = [(n, v) for n, v in out if n.decode("latin-1") not in listed]
    return out


