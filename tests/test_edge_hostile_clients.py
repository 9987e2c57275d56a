"""The edge against hostile clients, over raw sockets against a real `kairos serve` (issue 10)."""

from __future__ import annotations

import socket
import time

from tests.edge_support import route


def connect(gw, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((gw.host, gw.port), timeout=timeout)
    return s


def read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length body (the gateway's and the test upstream's)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def closed_by_peer(s: socket.socket) -> bool:
    """True when the gateway closes the connection (EOF or reset) before the socket's timeout."""
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_stalled_request_head_is_cut_and_a_slow_body_is_not(gateway, upstream):
    gw = gateway({"server": {"request_header_timeout_ms": 300}, "routers": [route(upstream)]})

    # part of a head, then nothing: cut after the head timeout (before: held forever)
    s = connect(gw)
    s.sendall(b"GET /api HTTP/1.1\r\nHost: a\r\n")
    assert closed_by_peer(s)
    s.close()

    # connected, never a byte: cut too
    s = connect(gw)
    assert closed_by_peer(s)
    s.close()

    # a head in pieces that completes in time is served
    s = connect(gw)
    s.sendall(b"GET /api HTTP/1.1\r\n")
    time.sleep(0.1)
    s.sendall(b"Host: a\r\n\r\n")
    assert read_response(s).startswith(b"HTTP/1.1 200 ")

    # the next request on the same keep-alive connection has its own head deadline
    s.sendall(b"GET /api HTTP/1.1\r\nHo")
    assert closed_by_peer(s)
    s.close()

    # a complete head, then a body that takes longer than the head timeout: not the head's business
    s = connect(gw)
    s.sendall(b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    time.sleep(0.6)
    s.sendall(b"hello")
    assert read_response(s).startswith(b"HTTP/1.1 200 ")
    s.close()
    assert upstream.requests[-1].body_len == 5
