"""The upstream side of the opening handshake, done before the client's is answered.

The client's request becomes the upstream's: same path template rendering and
query as HTTP, the end-to-end headers with X-Forwarded-*, X-Request-ID and the
forwarded claims (`upstream_headers`, shared with HTTP), the client's Origin,
cookies and User-Agent, and its subprotocols (offered upstream only when the
client offered some: an empty Sec-WebSocket-Protocol is refused by strict
servers). The WebSocket handshake headers themselves (key, version,
extensions) belong to each hop and are made by the `websockets` client.

An upstream that answers anything but 101 is an `UpstreamRefused`, relayed to
the client as that HTTP response (ASGI `websocket.http.response`); transport
failures are the upstream client's error family, so the breaker, outlier
detection and retry treat them as for HTTP.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from kairos.types import Scope, Send
from kairos.upstream.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamReset,
    UpstreamTimeout,
)

# Per-hop handshake headers: the websockets client writes its own.
HANDSHAKE_HEADERS = frozenset(
    {
        "host",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
_HTTP_SCHEME = {"ws": "http", "wss": "https"}
# Not relayed from a refusing upstream's response (the server frames its own).
_RESPONSE_SKIP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"content-length", b"te", b"trailer"}
)
# Frames queued per direction before reading from the peer pauses (each at most max_message_bytes).
MAX_QUEUE = 4


class UpstreamRefused(Exception):
    """The upstream answered the handshake with an HTTP response instead of 101."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(f"upstream refused the upgrade with {status}")
        self.status = status
        self.headers = headers
        self.body = body


def handshake_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """`upstream_headers()`' output minus the per-hop handshake headers, as the websockets client wants them."""
    out = []
    for name, value in headers:
        n = name.decode("latin-1")
        if n.lower() in HANDSHAKE_HEADERS:
            continue
        v = value.decode("latin-1")
        if n == "x-forwarded-proto" and v in _HTTP_SCHEME:  # a WebSocket scope's scheme is ws/wss
            v = _HTTP_SCHEME[v]
        out.append((n, v))
    return out


@functools.cache
def _client_tls() -> ssl.SSLContext:
    """The trust store is read once per process (as the HTTP pool's context), not per wss:// connect."""
    return ssl.create_default_context()


def upstream_uri(secure: bool, authority: str, path_and_query: str) -> str:
    return f"{'wss' if secure else 'ws'}://{authority}{path_and_query}"


async def open_upstream(
    uri: str,
    connect_host: str,
    port: int,
    headers: list[tuple[str, str]],
    subprotocols: list[str] | None,
    timeout_s: float,
    max_message_bytes: int,
    close_timeout_s: float,
) -> ClientConnection:
    """Connect and complete the handshake within `timeout_s`; raise UpstreamRefused or an UpstreamError."""
    kwargs: dict[str, Any] = {}
    if uri.startswith("wss:"):
        kwargs["ssl"] = _client_tls()
    try:
        return await connect(
            uri,
            host=connect_host,
            port=port,
            additional_headers=headers,
            subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols else None,
            compression=None,  # gateway-to-upstream traffic is not worth the CPU; towards the client it is per route
            user_agent_header=None,  # the client's User-Agent is among the forwarded headers
            proxy=None,  # never through an HTTP(S)_PROXY from the environment
            open_timeout=timeout_s,
            # The upstream side's own keepalive (the client side has uvicorn's).
            ping_interval=20,
            ping_timeout=20,
            close_timeout=close_timeout_s,
            max_size=max_message_bytes,
            max_queue=MAX_QUEUE,
            **kwargs,
        )
    except InvalidStatus as exc:
        response = exc.response
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.raw_items()]
        raise UpstreamRefused(
            response.status_code, [h for h in raw if h[0] not in _RESPONSE_SKIP], bytes(response.body or b"")
        ) from None
    except TimeoutError:
        raise UpstreamTimeout(f"no WebSocket handshake from {uri} within {timeout_s * 1000:.0f} ms") from None
    except ConnectionRefusedError as exc:
        raise UpstreamConnectError(f"connection refused: {exc}") from None
    except ssl.SSLError as exc:
        raise UpstreamConnectError(f"TLS handshake failed: {exc}") from None
    except (ConnectionResetError, BrokenPipeError, EOFError) as exc:
        raise UpstreamReset(f"connection closed during the handshake: {exc}") from None
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            raise UpstreamConnectTimeout(str(exc)) from None
        raise UpstreamConnectError(f"cannot connect: {exc}") from None
    except InvalidHandshake as exc:
        raise UpstreamReset(f"invalid WebSocket handshake: {exc}") from None


async def relay_refusal(scope: Scope, send: Send, refused: UpstreamRefused) -> None:
    """Fail the client's handshake with the upstream's own response."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": f"upstream answered {refused.status}"})
        return
    await send({"type": "websocket.http.response.start", "status": refused.status, "headers": refused.headers})
    await send({"type": "websocket.http.response.body", "body": refused.body})
