"""WebSocket proxying through a real `kairos serve` (and `uvicorn kairos.app:app`), with real
websockets upstreams (tests/ws_upstream.py) and real websockets clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import httpx
import pytest
from jose import jwt
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ops_helpers import config, metric_value
from ws_upstream import WsUpstream

SECRET = "websocket-test-secret-that-is-long-enough-32"


@pytest.fixture
def ws_upstream():
    up = WsUpstream().start()
    yield up
    up.stop()


def ws_route(up, external: str = "/ws/{room}", internal: str = "/info/{room}", **extra) -> dict:
    return {"external_path": external, "internal_path": internal, "methods": ["GET"], "protocol": "websocket",
            "backends": [up.backend()], **extra}


def http_route(up, external: str = "/api/{id}") -> dict:
    return {"external_path": external, "internal_path": "/echo/{id}", "methods": ["GET"], "backends": [up.backend("http")]}


def ws_url(gw, path: str) -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


def open_ws(gw, path: str, **kw):
    kw.setdefault("open_timeout", 5)
    return connect(ws_url(gw, path), proxy=None, **kw)


async def refused(gw, path: str, **kw) -> tuple[int, dict, bytes]:
    """Status, headers, body of a handshake the gateway answers with HTTP."""
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(gw, path, **kw):
            pass
    response = info.value.response
    return response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}, response.body


async def closed(ws) -> tuple[int | None, str]:
    """Read until the connection closes; its close code and reason as the client saw them."""
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    return ws.close_code, ws.close_reason


def metrics(gw) -> str:
    return httpx.get(gw.url + "/metrics", trust_env=False).text


def access_lines(gw) -> list[dict]:
    return [r for r in gw.log_records() if r.get("event") == "access" and r.get("protocol") == "websocket"]


# --------------------------------------------------------------------------- handshake and relay
async def test_echo_subprotocols_and_forwarded_handshake(gateway, ws_upstream):
    gw = gateway(config(ws_route(ws_upstream), http_route(ws_upstream)))
    async with open_ws(gw, "/ws/lobby?x=1&y=%20z", subprotocols=["chat.v9", "chat.v1"], origin="https://app.example",
                       additional_headers={"Cookie": "session=abc", "X-Custom": "kept", "X-Request-ID": "ws-rid-1"},
                       user_agent_header="ws-test/1") as ws:
        assert ws.subprotocol == "chat.v1"  # the upstream's choice, accepted towards the client
        info = json.loads(await ws.recv())
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\xffbinary")
        assert await ws.recv() == b"\x00\xffbinary"
        big = "é" * 100_000  # 200 kB of UTF-8, under the default 1 MiB limit
        await ws.send(big)
        assert await ws.recv() == big
    headers = {}
    for name, value in info["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert info["path"] == "/info/lobby"
    assert info["query"] == "x=1&y=%20z"
    assert info["subprotocol"] == "chat.v1"
    assert headers["sec-websocket-protocol"] == ["chat.v9, chat.v1"]
    assert headers["origin"] == ["https://app.example"]
    assert headers["cookie"] == ["session=abc"]
    assert headers["x-custom"] == ["kept"]
    assert headers["user-agent"] == ["ws-test/1"]
    assert headers["x-request-id"] == ["ws-rid-1"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{gw.port}"]
    assert headers["host"] == [f"127.0.0.1:{ws_upstream.port}"]
    assert "sec-websocket-extensions" not in headers  # the gateway does not compress towards the upstream

    # No subprotocol offered: none is sent upstream (an empty header breaks strict servers), none accepted.
    async with open_ws(gw, "/ws/quiet") as ws:
        assert ws.subprotocol is None
        info = json.loads(await ws.recv())
    assert not [v for n, v in info["headers"] if n.lower() == "sec-websocket-protocol"]

    # Plain HTTP on a websocket route: 426 with Upgrade: websocket.
    r = httpx.get(gw.url + "/ws/lobby", trust_env=False)
    assert r.status_code == 426
    assert r.headers["upgrade"] == "websocket"
    assert r.json()["type"] == "upgrade_required"
    # An upgrade on an HTTP route is refused, as before.
    status, _, _ = await refused(gw, "/api/1")
    assert status == 403
    # No route at all: the gateway's JSON 404 as the handshake's answer.
    status, _, body = await refused(gw, "/nowhere")
    assert status == 404 and json.loads(body)["type"] == "route_not_found"

    # One access-log line per connection, at close, with the frame counts and who closed.
    line = gw.wait_for_log(lambda r: r.get("protocol") == "websocket" and r.get("path") == "/ws/lobby")
    assert line["status"] == 101 and line["route"] == "/ws/{room}"
    assert line["messages_in"] == 3 and line["messages_out"] == 4
    assert line["bytes_in"] == 5 + 8 + 200_000
    assert line["closed_by"] == "client" and line["close_code"] == 1000
    assert line["request_id"] == "ws-rid-1"
    text = metrics(gw)
    assert metric_value(text, "kairos_websocket_upgrades_total", route="/ws/{room}", outcome="accepted") == 2
    assert metric_value(text, "kairos_websocket_messages_total", route="/ws/{room}", direction="to_upstream") == 3
    assert metric_value(text, "kairos_websocket_messages_total", route="/ws/{room}", direction="to_client") == 5
    assert metric_value(text, "kairos_websocket_bytes_total", route="/ws/{room}", direction="to_upstream") == 200_013
    assert metric_value(text, "kairos_websocket_connections", route="/ws/{room}") == 0


async def test_upstream_refusal_unreachable_and_slow(gateway, ws_upstream):
    from tests.conftest import free_port

    dead = {"host": "ws://127.0.0.1", "port": free_port()}
    gw = gateway(config(
        ws_route(ws_upstream, "/refuse/{code}", "/refuse/{code}"),
        ws_route(ws_upstream, "/slow", "/slow", websocket={"connect_timeout_ms": 300}),
        {**ws_route(ws_upstream, "/dead", "/echo"), "backends": [dead]},
    ))
    status, headers, body = await refused(gw, "/refuse/418")
    assert (status, body) == (418, b"refused 418")
    assert headers["x-refused"] == "yes"
    status, _, _ = await refused(gw, "/refuse/401")
    assert status == 401
    status, _, body = await refused(gw, "/dead")
    assert status == 502 and json.loads(body)["type"] == "upstream"
    assert str(dead["port"]) not in body.decode()  # topology stays in the log
    status, _, body = await refused(gw, "/slow")
    assert status == 504 and json.loads(body)["type"] == "timeout"
    text = metrics(gw)
    assert metric_value(text, "kairos_websocket_upgrades_total", route="/refuse/{code}", outcome="upstream_refused") == 2
    assert metric_value(text, "kairos_websocket_upgrades_total", route="/dead", outcome="upstream") == 1
    assert metric_value(text, "kairos_upstream_errors_total", kind="connect") >= 1


async def test_close_codes_both_ways_and_limits(gateway, ws_upstream):
    gw = gateway(config(
        ws_route(ws_upstream, "/echo", "/echo", websocket={"max_message_bytes": 1000}),
        ws_route(ws_upstream, "/close/{code}", "/close/{code}"),
        ws_route(ws_upstream, "/big/{n}", "/big/{n}", websocket={"max_message_bytes": 1000}),
        ws_route(ws_upstream, "/hold", "/hold"),
    ))
    # Client closes with its own code and reason: the upstream hears them.
    async with open_ws(gw, "/hold") as ws:
        await ws.close(4001, "client done")
    assert ("/hold", 4001, "client done") in ws_upstream.wait_closes(1)
    # Upstream closes with its own code and reason: the client hears them.
    async with open_ws(gw, "/close/4002") as ws:
        await ws.send("go")
        assert await closed(ws) == (4002, "bye")
    # A client message over max_message_bytes: 1009 to the client, 1001 to the upstream.
    async with open_ws(gw, "/echo") as ws:
        await ws.send("x" * 1000)
        assert await ws.recv() == "x" * 1000
        await ws.send(b"x" * 1001)
        assert (await closed(ws))[0] == 1009
    assert any(c[0] == "/echo" and c[1] == 1001 for c in ws_upstream.wait_closes(3))
    # An upstream message over it: 1009 to the upstream, 1011 to the client.
    async with open_ws(gw, "/big/5000") as ws:
        await ws.send("go")
        assert (await closed(ws))[0] == 1011
    assert any(c[0] == "/big/5000" and c[1] == 1009 for c in ws_upstream.wait_closes(4))
    # A client that vanishes (no close frame): the upstream hears 1001, never 1006.
    async with open_ws(gw, "/hold") as ws:
        ws.transport.abort()
    assert ws_upstream.wait_closes(5)[-1][:2] == ("/hold", 1001)
    lines = access_lines(gw)
    assert {(l["path"], l["closed_by"]) for l in lines} >= {
        ("/hold", "client"), ("/close/4002", "upstream"), ("/echo", "gateway"), ("/big/5000", "gateway")
    }


async def test_idle_timeout_and_max_connections(gateway, ws_upstream):
    gw = gateway(config(
        ws_route(ws_upstream, "/idle", "/echo", websocket={"idle_timeout_ms": 300}),
        ws_route(ws_upstream, "/one", "/echo", websocket={"max_connections": 1}),
    ))
    async with open_ws(gw, "/idle") as ws:
        for _ in range(3):  # traffic keeps it open past the timeout
            await asyncio.sleep(0.15)
            await ws.send("ping")
            assert await ws.recv() == "ping"
        assert await closed(ws) == (1001, "idle timeout")
    async with open_ws(gw, "/one") as first:
        status, headers, body = await refused(gw, "/one")
        assert status == 503 and json.loads(body)["type"] == "too_many_connections"
        await first.send("still here")
        assert await first.recv() == "still here"
    # The slot is free again once the first one closed.
    for _ in range(50):
        if metric_value(metrics(gw), "kairos_websocket_connections", route="/one") == 0:
            break
        await asyncio.sleep(0.05)
    async with open_ws(gw, "/one") as again:
        await again.send("x")
        assert await again.recv() == "x"


async def test_compression_towards_the_client_is_per_route(gateway, ws_upstream):
    # HTTP response compression and caching switched on for every route: websocket routes skip those layers.
    gw = gateway(config(
        ws_route(ws_upstream, "/zipped", "/echo", websocket={"compression": True}),
        ws_route(ws_upstream, "/plain", "/echo"),
        compression={"enabled": True}, cache={"enabled": True},
    ))
    async with open_ws(gw, "/zipped") as ws:  # the websockets client offers permessage-deflate by default
        assert ws.response.headers.get("Sec-WebSocket-Extensions", "").startswith("permessage-deflate")
        await ws.send("a" * 10_000)
        assert await ws.recv() == "a" * 10_000
    async with open_ws(gw, "/plain") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


# --------------------------------------------------------------------------- policies on the upgrade
def token(**claims) -> str:
    claims.setdefault("sub", "alice")
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_jwt_origin_and_rate_limit_on_the_upgrade(gateway, ws_upstream):
    gw = gateway(config(
        ws_route(ws_upstream, "/secure", "/info", auth_required=True),
        ws_route(ws_upstream, "/browser", "/info", auth_required=True,
                 websocket={"token_from": ["subprotocol", "query:access_token"]}),
        ws_route(ws_upstream, "/origins", "/echo", websocket={"allowed_origins": ["https://app.example"]}),
        ws_route(ws_upstream, "/cors", "/echo", cors={"allowed_origins": ["https://*.corp.example"]}),
        ws_route(ws_upstream, "/limited", "/echo",
                 rate_limit={"requests_per_window": 2, "window_duration": 60, "window_type": "FixedWindow"}),
        jwt={"secret": SECRET, "forward_claims": {"sub": "X-User"}},
    ))
    # JWT in the Authorization header; its claims go upstream.
    async with open_ws(gw, "/secure", additional_headers={"Authorization": f"Bearer {token()}"}) as ws:
        info = json.loads(await ws.recv())
    assert ["X-User", "alice"] in [[n, v] for n, v in info["headers"]] or ["x-user", "alice"] in info["headers"]
    status, headers, body = await refused(gw, "/secure")
    assert status == 401 and json.loads(body)["type"] == "authentication_error"
    assert headers["www-authenticate"] == "Bearer"
    status, _, _ = await refused(gw, "/secure", additional_headers={"Authorization": "Bearer nope"})
    assert status == 401
    # Only where token_from says so: subprotocol and query parameter (browsers cannot set headers).
    status, _, _ = await refused(gw, "/secure", subprotocols=["bearer", token()])
    assert status == 401
    async with open_ws(gw, "/browser", subprotocols=["bearer", token(sub="bob")]) as ws:
        assert ws.subprotocol == "bearer"  # the marker is accepted when the upstream picks none
        info = json.loads(await ws.recv())
    assert ["x-user", "bob"] in [[n.lower(), v] for n, v in info["headers"]]
    assert not [v for n, v in info["headers"] if n.lower() == "sec-websocket-protocol"]  # the token stays here
    async with open_ws(gw, "/browser", subprotocols=["chat.v2", f"bearer.{token(sub='carol')}"]) as ws:
        assert ws.subprotocol == "chat.v2"
        info = json.loads(await ws.recv())
    assert [v for n, v in info["headers"] if n.lower() == "sec-websocket-protocol"] == ["chat.v2"]
    async with open_ws(gw, f"/browser?room=1&access_token={token(sub='dave')}") as ws:
        info = json.loads(await ws.recv())
    assert info["query"] == "room=1"  # the token is not passed on to the upstream's logs
    assert ["x-user", "dave"] in [[n.lower(), v] for n, v in info["headers"]]
    status, _, _ = await refused(gw, "/browser?access_token=bad")
    assert status == 401
    assert "bad" not in "".join(json.dumps(l) for l in access_lines(gw) if l["path"] == "/browser")

    # Cross-site WebSocket hijacking: an Origin not on the list is refused; no Origin is not a browser.
    async with open_ws(gw, "/origins", origin="https://app.example") as ws:
        await ws.send("ok")
        assert await ws.recv() == "ok"
    status, _, body = await refused(gw, "/origins", origin="https://evil.example")
    assert status == 403 and json.loads(body)["type"] == "forbidden"
    async with open_ws(gw, "/origins") as ws:
        await ws.send("cli")
        assert await ws.recv() == "cli"
    # Default: the route's CORS origins.
    async with open_ws(gw, "/cors", origin="https://a.corp.example"):
        pass
    status, _, _ = await refused(gw, "/cors", origin="https://corp.example.evil")
    assert status == 403

    # Rate limiting counts connection attempts.
    for _ in range(2):
        async with open_ws(gw, "/limited"):
            pass
    status, headers, body = await refused(gw, "/limited")
    assert status == 429 and "retry-after" in headers
    text = metrics(gw)
    assert metric_value(text, "kairos_websocket_upgrades_total", route="/limited", outcome="rate_limit_exceeded") == 1
    assert metric_value(text, "kairos_websocket_upgrades_total", route="/origins", outcome="forbidden") == 1


# --------------------------------------------------------------------------- backends
async def test_balancer_retry_and_breaker(gateway, ws_upstream):
    from tests.conftest import free_port

    dead = {"host": "ws://127.0.0.1", "port": free_port()}
    gw = gateway(config(
        {**ws_route(ws_upstream, "/retried", "/echo"), "backends": [dead, ws_upstream.backend()],
         "retry": {"max_retries": 1, "initial_backoff_ms": 1, "max_backoff_ms": 1}},
        {**ws_route(ws_upstream, "/broken", "/echo"), "backends": [{"host": "ws://127.0.0.1", "port": free_port()}],
         "circuit_breaker": {"failure_threshold": 2, "reset_timeout_ms": 60000}},
    ))
    for _ in range(4):  # round robin hits the dead backend every other time; the retry moves on
        async with open_ws(gw, "/retried") as ws:
            await ws.send("r")
            assert await ws.recv() == "r"
    for _ in range(2):
        status, _, _ = await refused(gw, "/broken")
        assert status == 502
    status, headers, body = await refused(gw, "/broken")
    assert status == 503 and json.loads(body)["type"] == "circuit_open" and "retry-after" in headers
    text = metrics(gw)
    assert metric_value(text, "kairos_retries_total", route="/retried", reason="connect") >= 1


# --------------------------------------------------------------------------- lifecycle
async def test_reload_keeps_open_connections_and_closes_removed_routes(gateway, ws_upstream):
    cfg = config(ws_route(ws_upstream, "/keep", "/echo"), ws_route(ws_upstream, "/gone", "/echo"),
                 server={"shutdown_timeout_s": 0.5})
    gw = gateway(cfg)
    async with open_ws(gw, "/keep") as keep, open_ws(gw, "/gone") as gone:
        # Change the table (another route added, settings of /keep changed): both connections live on.
        changed = config(ws_route(ws_upstream, "/keep", "/echo", websocket={"idle_timeout_ms": 60000}),
                         ws_route(ws_upstream, "/gone", "/echo"), ws_route(ws_upstream, "/new", "/echo"),
                         server={"shutdown_timeout_s": 0.5})
        gw.rewrite_config(changed)
        gw.wait_for_log(lambda r: r.get("event") == "config_reloaded")
        for ws in (keep, gone):
            await ws.send("after reload")
            assert await ws.recv() == "after reload"
        # Remove /gone: its connection closes with 1001 after shutdown_timeout_s; /keep is untouched.
        gw.rewrite_config(config(ws_route(ws_upstream, "/keep", "/echo"), server={"shutdown_timeout_s": 0.5}))
        assert await closed(gone) == (1001, "route removed")
        await keep.send("still")
        assert await keep.recv() == "still"
    assert ("/echo", 1001, "route removed") in ws_upstream.wait_closes(2)


async def test_sigterm_drains_websockets_and_exits_0(gateway, ws_upstream):
    gw = gateway(config(ws_route(ws_upstream, "/hold", "/hold"), server={"shutdown_delay_s": 1.0}))
    async with open_ws(gw, "/hold") as ws:
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert httpx.get(gw.url + "/ready", trust_env=False).status_code == 503
        status, _, body = await refused(gw, "/hold")  # new upgrades refused while draining
        assert status == 503 and json.loads(body)["type"] == "draining"
        assert await closed(ws) == (1001, "going away")
    assert ("/hold", 1001, "going away") in ws_upstream.wait_closes(1)
    assert gw.wait(15) == 0


# --------------------------------------------------------------------------- entry points and compat
async def test_uvicorn_entry_point_and_the_compat_websocket_route(tmp_path, ws_upstream, compat_dir):
    """`uvicorn kairos.app:app` with kairos-rs's own config file, its websocket route pointed at our upstream."""
    from tests.conftest import free_port
    from tests.integration.test_entry_points import run, wait_health

    data = json.loads((compat_dir / "kairos-rs-config.json").read_text())
    routes = [r for r in data["routers"] if r.get("protocol") == "websocket"]
    assert routes and routes[0]["backends"][0]["host"].startswith("ws://")
    routes[0]["backends"] = [ws_upstream.backend()]
    data["routers"] = routes
    path = tmp_path / "compat.json"
    path.write_text(json.dumps(data))
    port = free_port()
    proc = run([sys.executable, "-m", "uvicorn", "kairos.app:app", "--port", str(port)], tmp_path,
               {"KAIROS_CONFIG_PATH": str(path)})
    try:
        wait_health(f"http://127.0.0.1:{port}/health", proc)
        async with connect(f"ws://127.0.0.1:{port}{routes[0]['external_path']}", proxy=None, open_timeout=5) as ws:
            await ws.send("through uvicorn")
            assert await ws.recv() == "through uvicorn"
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert ws_upstream.handshakes[-1].path == routes[0]["internal_path"]


# --------------------------------------------------------------------------- backpressure
def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_stops_reading_pauses_the_upstream(gateway, ws_upstream):
    """The upstream offers 1 GiB (1024 messages of 1 MiB); the client reads two and stops. The flood
    stalls within a few MiB (client queue + socket buffers + the gateway's few frames), and the
    gateway's RSS grows by far less than 50 MiB."""
    gw = gateway(config(ws_route(ws_upstream, "/flood", "/flood/1024/1048576")))
    before = rss_bytes(gw.pid)
    # close_timeout: this client leaves megabytes unread, so its own closing handshake cannot complete.
    async with open_ws(gw, "/flood", max_queue=2, max_size=None, close_timeout=0.2) as ws:
        for _ in range(2):
            assert len(await ws.recv()) == 1048576
        # Stop reading; wait until the upstream cannot send any more.
        last, still = -1, 0
        while still < 5:
            await asyncio.sleep(0.1)
            sent = ws_upstream.sent_bytes
            still = still + 1 if sent == last else 0
            last = sent
        grown = rss_bytes(gw.pid) - before
        assert ws_upstream.sent_bytes < 64 * 1048576, ws_upstream.sent_bytes
        assert grown < 50 * 1048576, grown
        # Reading again resumes the flow.
        for _ in range(8):
            assert len(await ws.recv()) == 1048576


async def test_demo_chat_service_behind_the_gateway(gateway, tmp_path):
    """configs/demo.json's websocket route in front of `python -m kairos.demo`'s chat echo."""
    import subprocess

    from tests.conftest import REPO_ROOT, free_port

    demo = json.loads((REPO_ROOT / "configs" / "demo.json").read_text())
    route = next(r for r in demo["routers"] if r.get("protocol") == "websocket")
    port = free_port()
    route["backends"][0]["port"] = port
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kairos.demo", "--only", "chat", "--chat-port", str(port)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "chat on" in proc.stdout.readline()
        gw = gateway(config(route))
        async with open_ws(gw, "/ws/echo/lobby") as ws:
            assert json.loads(await ws.recv()) == {"hello": "lobby", "service": "chat"}
            await ws.send("hi")
            assert await ws.recv() == "hi"
    finally:
        proc.terminate()
        proc.wait(10)


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, as files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kairos-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_wss_backend_verified_with_the_system_trust(gateway, tmp_path):
    """A wss:// backend: TLS to the upstream, verified against the trust store (SSL_CERT_FILE here)."""
    import ssl

    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    up = WsUpstream("wss-upstream", ssl_context=context).start()
    try:
        routes = [ws_route(up, "/tls", "/echo"), {**ws_route(up, "/plain-to-tls", "/echo", websocket={"connect_timeout_ms": 500}),
                                                  "backends": [up.backend("ws")]}]
        routes[0]["backends"] = [up.backend("wss")]
        gw = gateway(config(*routes), env={"SSL_CERT_FILE": str(cert)})
        async with open_ws(gw, "/tls") as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
        status, _, _ = await refused(gw, "/plain-to-tls")  # plain ws:// to a TLS port: no handshake
        assert status in (502, 504)
        untrusted = gateway(config(routes[0]))  # no SSL_CERT_FILE: the certificate is not trusted
        status, _, body = await refused(untrusted, "/tls")
        assert status == 502 and json.loads(body)["type"] == "upstream"
    finally:
        up.stop()
