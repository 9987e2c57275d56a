"""The edge against hostile clients, over raw sockets against a real `kairos serve` (issue 10)."""

from __future__ import annotations

import json
import socket
import time

import pytest

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
    gw = gateway({"server": {"request_header_timeout_ms": 300},
                  "routers": [route(upstream), route(upstream, "/up/{rest:path}", internal_path="/{rest}")]})

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

    # a partial head pipelined behind a slow request: the slow response is not lost
    s = connect(gw)
    s.sendall(b"GET /up/slow?ms=800 HTTP/1.1\r\nHost: a\r\n\r\nGET /api HTTP/1.1\r\nHo")
    assert read_response(s).startswith(b"HTTP/1.1 200 ")
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


# --------------------------------------------------------------------------- request head limits


def exchange(gw, request: bytes) -> tuple[int, dict[str, list[str]], bytes]:
    """Send one raw request, read one response: (status, headers by lowercase name, body)."""
    with connect(gw) as s:
        s.sendall(request)
        raw = read_response(s)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split()[1]), headers, body


def test_request_target_counts_against_the_header_limit_and_host_must_be_one_valid_host(gateway, upstream):
    gw = gateway({"server": {"max_header_bytes": 2000}, "routers": [route(upstream)]})

    status, headers, body = exchange(gw, b"GET /api?q=" + b"x" * 3000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 414 and json.loads(body)["type"] == "uri_too_long", body
    assert headers["connection"] == ["close"]
    # the target and the headers together
    status, _, body = exchange(gw, b"GET /api?q=" + b"x" * 1500 + b" HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 600 + b"\r\n\r\n")
    assert status == 431 and json.loads(body)["type"] == "header_too_large", body
    assert exchange(gw, b"GET /api?q=" + b"x" * 1500 + b" HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 200

    for path in (b"/api", b"/health"):
        status, _, body = exchange(gw, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert status == 400 and json.loads(body)["type"] == "bad_request", body
        for host in (b"a b", b"a/b", b"a\\b", b"a@b", b"a:8o", b"[::1", b"a?b"):
            status, _, body = exchange(gw, b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert status == 400 and json.loads(body)["type"] == "bad_request", (host, body)
    for host in (b"example.com", b"example.com:8080", b"127.0.0.1:1", b"[::1]:8080", b"xn--bcher-kva.example", b""):
        assert exchange(gw, b"GET /api HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")[0] == 200, host
    assert len(upstream.requests) == 1 + 6


def refused_while_streaming(gw, start: bytes, filler: bytes) -> bytes:
    """Send `start`, then `filler` in 64 KiB pieces (20 MB at most), never ending the head;
    return what the gateway answered (b"" if it only closed)."""
    import select

    s = connect(gw)
    try:
        s.sendall(start)
        piece = filler * (65536 // len(filler))
        for _ in range(20 * 1024 * 1024 // len(piece)):
            if select.select([s], [], [], 0)[0]:
                break  # answered while the head is still streaming
            s.sendall(piece)
        return read_response(s)
    except OSError:
        return b""
    finally:
        s.close()


def test_an_oversized_head_is_refused_while_it_streams_not_after(gateway, upstream):
    # `kairos serve` counts the head as it is parsed: a 20 MB header line is never held in memory
    gw = gateway({"server": {"max_header_bytes": 4096, "request_header_timeout_ms": 20000},
                  "routers": [route(upstream)]})
    answer = refused_while_streaming(gw, b"GET /api HTTP/1.1\r\nHost: a\r\nX-Big: ", b"b")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["type"] == "header_too_large"
    answer = refused_while_streaming(gw, b"GET /api?q=", b"q")
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["type"] == "uri_too_long"
    answer = refused_while_streaming(gw, b"GET /api HTTP/1.1\r\nHost: a\r\n", b"X: 1\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]  # beyond max_headers (100)
    assert exchange(gw, b"GET /api HTTP/1.1\r\nHost: a\r\n\r\n")[0] == 200
    # a head split across reads, its end arriving with a large body: the body is not head
    with connect(gw) as s:
        s.sendall(b"POST /api HTTP/1.1\r\nHost: a\r\n")
        time.sleep(0.1)
        s.sendall(b"Content-Length: 400000\r\n\r\n" + b"x" * 400_000)
        assert read_response(s).startswith(b"HTTP/1.1 200 ")
    assert len(upstream.requests) == 2 and upstream.requests[-1].body_len == 400_000


# --------------------------------------------------------------------------- identity headers


def test_identity_headers_cannot_be_erased_or_forged(gateway, upstream):
    from jose import jwt as jose_jwt

    from tests.edge_support import SECRET, claims

    gw = gateway({
        "jwt": {"secret": SECRET, "forward_claims": {"sub": "X-User-Id"}},
        "routers": [route(upstream, "/private", auth_required=True), route(upstream, "/open")],
    })
    token = jose_jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256").encode()
    hostile = (
        b"Connection: keep-alive, X-User-Id, X-Request-ID, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host\r\n"
        b"X-User-Id: mallory\r\nX_User_Id: admin\r\nx-user_id: admin\r\nX-USER_ID: admin\r\n"
        b"X_Request_Id: forged\r\nX_Forwarded_For: 10.0.0.1\r\nX_Forwarded_Proto: https\r\nX_Forwarded_Host: evil\r\n"
    )
    for path, auth in ((b"/private", b"Authorization: Bearer " + token + b"\r\n"), (b"/open", b"")):
        status, _, body = exchange(gw, b"GET " + path + b" HTTP/1.1\r\nHost: gw.example\r\n" + auth + hostile + b"\r\n")
        assert status == 200, body
        seen: dict[str, list[str]] = {}
        for name, value in json.loads(body)["headers"]:
            seen.setdefault(name.lower(), []).append(value)
        assert not [n for n in seen if "_" in n], seen  # every lookalike dropped
        assert seen.get("x-user-id") == (["alice"] if path == b"/private" else None), seen
        assert len(seen["x-request-id"]) == 1 and seen["x-request-id"][0] != "forged"
        assert seen["x-forwarded-for"] == ["127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == ["gw.example"]


# --------------------------------------------------------------------------- what the upstream answers


class ScriptedUpstream:
    """A raw upstream: each request's path picks the exact bytes answered (keep-alive, any number of requests)."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        import threading

        self.answers = answers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1]
                conn.sendall(self.answers[path])

    def close(self) -> None:
        self.listener.close()


def raw_route(port: int, path: str) -> dict:
    return {"external_path": path, "internal_path": path, "methods": ["GET"], "host": "http://127.0.0.1", "port": port}


def test_bodiless_statuses_with_content_length_keep_the_client_connection_and_bad_statuses_are_502(gateway):
    up = ScriptedUpstream({
        b"/304": b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n",
        b"/204": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"/999": b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
        b"/600": b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
        b"/099": b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
    })
    try:
        gw = gateway({"routers": [raw_route(up.port, p) for p in ("/304", "/204", "/ok", "/999", "/600", "/099")]})
        with connect(gw) as s:
            # a conditional request with a request pipelined behind it, then one more on the same connection
            s.sendall(b"GET /304 HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"v1\"\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            first = read_head(s)
            assert first.startswith(b"HTTP/1.1 304 "), first
            assert b"content-length" not in first.lower() and b"transfer-encoding" not in first.lower()
            assert b'etag: "v1"' in first.lower()
            second = read_response(s)
            assert second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"\r\n\r\nok"), second
            s.sendall(b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            third = read_head(s)
            assert third.startswith(b"HTTP/1.1 204 "), third
            assert read_response(s).endswith(b"\r\n\r\nok")
        for path in (b"/999", b"/600", b"/099"):
            status, _, body = exchange(gw, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            assert status == 502 and json.loads(body)["type"] == "upstream", (path, body)
    finally:
        up.close()


def read_head(s: socket.socket) -> bytes:
    """A bodiless response's head, byte by byte, so that what follows stays in the socket."""
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return data


MOUNTED = '''
from starlette.applications import Starlette
from starlette.routing import Mount
from kairos.app import create_app
app = Starlette(routes=[Mount("/gw", create_app({config!r}))])
'''


@pytest.mark.parametrize("started_by", ["kairos serve", "uvicorn kairos.app:app", "mounted"])
def test_exactly_one_server_and_date_header(gateway, upstream, tmp_path, started_by):
    # /cached: a hit is answered from a stored response (which keeps a Date of its own)
    config = {"routers": [route(upstream), route(upstream, "/cached", methods=["GET"], cache={"enabled": True})]}
    if started_by == "kairos serve":
        gw = gateway(config)
        prefix = b""
    else:
        gw = UvicornProcess(tmp_path, config, mounted=started_by == "mounted")
        prefix = b"/gw" if started_by == "mounted" else b""
    try:
        for path in (b"/api", b"/nowhere", b"/health", b"/cached", b"/cached"):
            status, headers, _ = exchange(gw, b"GET " + prefix + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            assert status in (200, 404), status
            assert len(headers.get("server", [])) == 1, (path, headers)
            assert len(headers.get("date", [])) == 1, (path, headers)
        assert headers["x-cache"] == ["HIT"], headers  # the last one came from the cache
        # the upstream's own (aiohttp's) is replaced, as nginx does
        assert "aiohttp" not in exchange(gw, b"GET " + prefix + b"/api HTTP/1.1\r\nHost: a\r\n\r\n")[1]["server"][0]
    finally:
        if started_by != "kairos serve":
            gw.stop()


class UvicornProcess:
    """`uvicorn kairos.app:app` (or the gateway mounted in a Starlette app) in a subprocess."""

    def __init__(self, tmp_path, config: dict, mounted: bool) -> None:
        import subprocess
        import sys

        from tests.conftest import _hermetic_env, free_port

        path = tmp_path / "uvicorn-config.json"
        path.write_text(json.dumps(config))
        target = "kairos.app:app"
        if mounted:
            (tmp_path / "mounted_app.py").write_text(MOUNTED.format(config=str(path)))
            target = "mounted_app:app"
        self.host, self.port = "127.0.0.1", free_port()
        env = _hermetic_env({"KAIROS_CONFIG_PATH": str(path)})
        env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--port", str(self.port), "--log-level", "warning"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else "")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
