"""Forward one request to one backend and stream the answer back.

Bodies stream both ways with bounded memory: the request body is handed to the
upstream client as an async iterator over ASGI `http.request` messages, the
response is relayed chunk by chunk as it arrives (SSE and chunked responses
reach the client as they are produced, not at the end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from kairos.errors import GatewayError
from kairos.observability import metrics
from kairos.observability.logging import log_event
from kairos.types import Receive, Scope, Send
from kairos.upstream.client import Response, UpstreamClient, UpstreamError, UpstreamTimeout
from kairos.upstream.cluster import Backend

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


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


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


async def request_body(receive: Receive) -> AsyncIterator[bytes]:
    """The client's body, chunk by chunk as it arrives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


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


async def open_exchange(
    client: UpstreamClient,
    scope: Scope,
    backend: Backend,
    path_and_query: str,
    headers: list[tuple[bytes, bytes]],
    body: AsyncIterator[bytes] | bytes | None,
    timeout_s: float,
    connect_timeout_s: float | None,
) -> Response:
    """Send the request and wait for the response headers, within `timeout_s` overall.

    The caller (the Forwarder) counts the backend's in-flight requests, across the
    whole exchange including the streamed response, and its errors per attempt."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.request(
                backend.scheme, backend.connect_host, backend.port, scope["method"], path_and_query,
                headers, body, connect_timeout_s,
            )
    except TimeoutError:
        raise UpstreamTimeout(f"no response from {backend.address} within {timeout_s * 1000:.0f} ms") from None
    metrics.observe_upstream(backend.address, time.perf_counter() - start)
    return response


# A response with no length, or this long, is relayed with an eye on the client: if it
# goes away, uvicorn's send() returns silently and an SSE stream would be read forever.
_WATCH_ABOVE = 1024 * 1024


def _streams(raw: list[tuple[bytes, bytes]]) -> bool:
    for name, value in raw:
        if name.lower() == b"content-length":
            try:
                return int(value) > _WATCH_ABOVE
            except ValueError:
                return True
    return True


async def _abort_on_disconnect(receive: Receive, response: Response) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    response.abort()


async def relay_response(scope: Scope, send: Send, response: Response, receive: Receive | None = None) -> None:
    """Stream the upstream's response to the client (the access log counts the bytes).

    `receive` is given when the request body has been read completely: then a long or
    endless response stops (and its upstream connection closes) when the client leaves.
    """
    sent = 0
    watcher: asyncio.Task[None] | None = None
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response_headers(response.raw_headers),
            }
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        if receive is not None and _streams(response.raw_headers):
            watcher = asyncio.ensure_future(_abort_on_disconnect(receive, response))
        read = response.read
        try:
            while chunk := await read():
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Too late for an error response: the client's connection is aborted (raising is
            # the only honest way; ending the body cleanly would pass a truncation off as whole).
            log_event(
                "upstream_error", logging.WARNING, request_id=scope.get("kairos.request_id", ""),
                backend=scope.get("kairos.backend"), kind=exc.kind, error=f"after {sent} body bytes: {exc}",
            )
            raise
        await send({"type": "http.response.body", "body": b""})
    finally:
        if watcher is not None:
            watcher.cancel()
        response.release()


def upstream_failure(exc: UpstreamError, backend: Backend, scope: Scope) -> GatewayError:
    """The JSON error a client sees for a transport failure (the backend's address and the
    details go to the log, with the request id: internal topology is not the client's business)."""
    if exc.kind != "request_body":
        route = scope.get("kairos.route")
        log_event(
            "upstream_error", logging.WARNING, request_id=scope.get("kairos.request_id", ""),
            route=route.name if route is not None else None, backend=backend.address, kind=exc.kind, error=str(exc),
        )
    if isinstance(exc, UpstreamTimeout):
        return GatewayError("timeout", "the upstream did not answer in time")
    if exc.kind == "connect_timeout":
        return GatewayError("timeout", "connecting to the upstream timed out")
    if exc.kind == "connect":
        return GatewayError("upstream", "the upstream refused or could not be reached")
    return GatewayError("upstream", "the upstream closed or reset the connection")
