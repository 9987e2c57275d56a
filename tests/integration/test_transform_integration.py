"""Transformation through a real gateway to a real upstream that echoes what it received.

Every action on request headers, query, path and JSON, and on response headers,
status and JSON; claims from a verified token; kairos-rs's own example file;
what is left alone (gateway errors, encoded and non-JSON bodies) and why.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time

import httpx
import pytest
from aiohttp import web
from jose import jwt as jose_jwt

from tests.conftest import free_port

SECRET = "transform-test-secret-that-is-long-enough-0123456789"


class Echo:
    """An aiohttp upstream in a thread: echoes the request it received as JSON.

    /respond/<status>[?ctype=&gzip=1&chunked=N]  a canned JSON document with that status
    anything else                               {"method", "target", "headers", "body"}
    Every response carries `X-Up-Old: old`, `X-Up-Drop: x` and aiohttp's `Server` header.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        ready = threading.Event()

        async def boot() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self.runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
            await self.runner.setup()
            await web.SockSite(self.runner, sock).start()
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(boot()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        ready.wait(10)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"X-Up-Old": "old", "X-Up-Drop": "x"}
        if request.path.startswith("/respond/"):
            status = int(request.path.rsplit("/", 1)[1])
            doc = json.dumps({"a": 1, "secret": "s", "list": [1]}).encode()
            ctype = request.query.get("ctype", "application/json")
            if request.query.get("gzip"):
                doc = gzip.compress(doc)
                headers["Content-Encoding"] = "gzip"
            if request.query.get("chunked"):
                resp = web.StreamResponse(status=status, headers={**headers, "Content-Type": ctype})
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                await resp.write(b'{"big":"')
                await resp.write(b"x" * int(request.query["chunked"]))
                await resp.write(b'"}')
                await resp.write_eof()
                return resp
            return web.Response(status=status, body=doc, headers={**headers, "Content-Type": ctype})
        return web.Response(
            body=json.dumps({
                "method": request.method,
                "target": request.raw_path,
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
                "body": body.decode("latin-1"),
            }).encode(),
            status=404 if "missing" in request.path else 200,
            headers={**headers, "Content-Type": "application/json"},
        )

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def echo():
    e = Echo()
    yield e
    e.stop()


def headers_of(doc: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in doc["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def access_record(gw, path_prefix: str, timeout: float = 5.0) -> dict:
    return gw.wait_for_log(lambda r: r.get("event") == "access" and r.get("path", "").startswith(path_prefix),
                           timeout)


def test_kairos_rs_example_works_as_its_readme_says(gateway, echo, compat_dir):
    config = json.loads((compat_dir / "kairos-rs-config-transform.json").read_text())
    config["routers"][0]["host"] = "http://127.0.0.1"
    config["routers"][0]["port"] = echo.port
    gw = gateway(config)
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        r = c.get("/api/v1/users?debug=1&x=1&x=%2F&debug=2",
                  headers={"Cookie": "session=1", "User-Agent": "Mozilla/5.0 (X11; Linux)"})
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["target"] == "/v2/users?x=1&x=%2F&api_key=secret123"
        h = headers_of(seen)
        assert h["x-forwarded-by"] == ["kairos-gateway"]
        assert "cookie" not in h
        assert h["user-agent"] == ["KairosGateway/5.0 (X11; Linux)"]
        assert r.headers["x-powered-by"] == "Kairos Gateway"
        assert r.headers.get_list("server") == ["kairos"]  # the upstream's (aiohttp) is not relayed
        # 404 -> 200, and the access log keeps what the upstream said
        r = c.get("/api/v1/missing")
        assert r.status_code == 200 and r.json()["target"] == "/v2/missing?api_key=secret123"
    rec = access_record(gw, "/api/v1/missing")
    assert rec["status"] == 200 and rec["upstream_status"] == 404
    rec = access_record(gw, "/api/v1/users")
    assert rec["user_agent"] == "Mozilla/5.0 (X11; Linux)"  # the client's, not the upstream's


def request_route(echo, **over):
    r = {
        "external_path": "/api/{tenant}/{rest:path}",
        "internal_path": "/internal/{rest}",
        "methods": ["GET", "POST"],
        "host": "http://127.0.0.1",
        "port": echo.port,
        "auth_required": True,
        "request_transformation": {
            "headers": [
                {"action": "append", "name": "X-Multi", "value": "three"},
                {"action": "add", "name": "X-Tenant", "value": "{path.tenant}"},
                {"action": "add", "name": "X-Keep", "value": "never"},
                {"action": "set", "name": "X-User", "value": "{claim.sub}"},
                {"action": "set", "name": "X-From-Query", "value": "{query.q}"},
                {"action": "replace", "name": "User-Agent", "pattern": "^curl/(?P<v>.+)$",
                 "replacement": "gateway-curl/${v} ($$)"},
                {"action": "replace", "name": "X-Present", "value": "{request_id}"},
                {"action": "rename", "name": "X-Old", "to": "X-New"},
                {"action": "remove", "name": "Cookie"},
            ],
            "path": {"pattern": "^/api/([a-z]+)/v1/(.*)$", "replacement": "/v2/{claim.team}/$1/${2}"},
            "query_params": [
                {"action": "remove", "name": "debug"},
                {"action": "rename", "name": "old", "to": "new"},
                {"action": "replace", "name": "n", "pattern": "(\\d+)", "replacement": "n$1"},
                {"action": "set", "name": "s", "value": "{claim.sub}"},
                {"action": "add", "name": "a", "value": "added"},
                {"action": "append", "name": "n", "value": "3"},
            ],
            "json": [
                {"action": "remove", "path": "/password"},
                {"action": "rename", "path": "/old", "to": "/meta/new"},
                {"action": "replace", "path": "/n", "value": 10},
                {"action": "set", "path": "/user", "value": {"sub": "{claim.sub}", "ip": "{client_ip}"}},
                {"action": "add", "path": "/keep", "value": "never"},
                {"action": "append", "path": "/tags", "value": "gw"},
            ],
        },
    }
    r.update(over)
    return r


def token(**claims) -> str:
    payload = {"sub": "u-1", "team": "blue", "iss": "t", "aud": "t", "exp": int(time.time()) + 600, **claims}
    return jose_jwt.encode(payload, SECRET, algorithm="HS256")


def test_every_request_action_with_claims(gateway, echo):
    gw = gateway({"jwt": {"secret": SECRET, "issuer": "t", "audience": "t"}, "routers": [request_route(echo)]})
    auth = {"Authorization": f"Bearer {token()}"}
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        r = c.post(
            "/api/acme/v1/items/9?debug=1&old=o&n=1&s=x&n=2&keep=%20raw&s=y&debug=2",
            headers={**auth, "X-Multi": "one", "X-Keep": "kept", "User-Agent": "curl/8.5", "X-Present": "p",
                     "X-Old": "old", "Cookie": "c=1", "X-Request-ID": "rid-42", "Content-Type": "application/json"},
            content=json.dumps({"password": "p", "old": 1, "n": 1, "keep": "kept", "tags": ["a"]}),
        )
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["target"] == "/v2/blue/acme/items/9?new=o&n=n1&s=u-1&n=n2&keep=%20raw&a=added&n=3"
        h = headers_of(seen)
        assert h["x-multi"] == ["one", "three"]
        assert h["x-tenant"] == ["acme"] and h["x-keep"] == ["kept"]
        assert h["x-user"] == ["u-1"]
        assert h["x-from-query"] == [""]
        assert h["user-agent"] == ["gateway-curl/8.5 ($)"]
        assert h["x-present"] == ["rid-42"]
        assert h["x-new"] == ["old"] and "x-old" not in h and "cookie" not in h
        body = json.loads(seen["body"])
        assert body == {"n": 10, "keep": "kept", "tags": ["a", "gw"], "meta": {"new": 1},
                        "user": {"sub": "u-1", "ip": "127.0.0.1"}}
        assert h["content-length"] == [str(len(seen["body"]))]

        # no match of the path pattern: internal_path as usual; a value with CR/LF is never sent
        r = c.get("/api/acme/other?q=a%0D%0AX-Evil:%201", headers=auth)
        assert r.status_code == 200
        seen = r.json()
        assert seen["target"].startswith("/internal/other?q=a%0D%0AX-Evil:%201&s=u-1")
        h = headers_of(seen)
        assert "x-from-query" not in h and "x-evil" not in h
        gw.wait_for_log(lambda rec: rec.get("event") == "transform_header_dropped" and rec["header"] == "X-From-Query")

        # a rewritten path that would smuggle a slash (here from a claim) is refused like a capture
        r = c.get("/api/acme/v1/a", headers={"Authorization": f"Bearer {token(team='../admin')}"})
        assert r.status_code == 400 and r.json()["type"] == "bad_request"

        # bodies that are not plain JSON stream through untouched, and the access log says why
        r = c.post("/api/acme/other?tag=text", headers={**auth, "Content-Type": "text/plain"}, content=b'{"password":1}')
        assert json.loads(r.json()["body"]) == {"password": 1}
        zipped = gzip.compress(b'{"password":1}')
        r = c.post("/api/acme/other?tag=gz", headers={**auth, "Content-Type": "application/json",
                                                      "Content-Encoding": "gzip"}, content=zipped)
        assert r.json()["body"].encode("latin-1") == zipped
        # no token: the gateway's 401, nothing transformed
        assert c.get("/api/acme/v1/x").status_code == 401
    skipped = [r.get("transform_skipped") for r in gw.log_records() if r.get("event") == "access"]
    assert ["request_json: not JSON (text/plain)"] in skipped
    assert ["request_json: content-encoding gzip"] in skipped


def response_route(echo, **over):
    r = {
        "external_path": "/r/{rest:path}",
        "internal_path": "/{rest}",
        "methods": ["GET", "HEAD"],
        "host": "http://127.0.0.1",
        "port": echo.port,
        "response_transformation": {
            "headers": [
                {"action": "remove", "name": "Server"},
                {"action": "rename", "name": "X-Up-Old", "to": "X-Up-New"},
                {"action": "replace", "name": "Content-Type", "pattern": "^application/json$",
                 "replacement": "application/vnd.kairos+json"},
                {"action": "set", "name": "X-Route", "value": "{route}"},
                {"action": "add", "name": "X-Up-Drop", "value": "not added"},
                {"action": "append", "name": "X-Up-Drop", "value": "{header.x-client}"},
            ],
            "status_code_mappings": [
                {"from": 404, "to": 200, "condition": "path ^= '/r/respond/' && header.x-map == 'yes'"},
                {"from": 404, "to": 410, "condition": "method == 'GET' || path ~ 'never'"},
                {"from": 502, "to": 200, "condition": None},
            ],
            "json": [
                {"action": "remove", "path": "/secret"},
                {"action": "rename", "path": "/a", "to": "/b"},
                {"action": "replace", "path": "/list/0", "value": "first"},
                {"action": "set", "path": "/request_id", "value": "{request_id}"},
                {"action": "add", "path": "/b", "value": "never"},
                {"action": "append", "path": "/list", "value": 2},
            ],
            "max_json_body": 1000,
        },
    }
    r.update(over)
    return r


def test_every_response_action(gateway, echo):
    dead = free_port()
    down = response_route(echo, external_path="/down/{rest:path}", port=dead)
    # header edits alone run as a response-start hook instead of a send wrapper
    hook = response_route(echo, external_path="/hook/{rest:path}")
    hook["response_transformation"] = {"headers": hook["response_transformation"]["headers"]}
    hook_down = dict(hook, external_path="/hook-down/{rest:path}", port=dead)
    gw = gateway({"routers": [response_route(echo), down, hook, hook_down]})
    with httpx.Client(base_url=gw.url, timeout=10, trust_env=False) as c:
        r = c.get("/r/respond/404", headers={"X-Map": "yes", "X-Client": "c1", "X-Request-ID": "rid-7"})
        assert r.status_code == 200
        assert r.json() == {"b": 1, "list": ["first", 2], "request_id": "rid-7"}
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers["content-type"] == "application/vnd.kairos+json"
        assert r.headers.get_list("server") == ["kairos"]
        assert "x-up-old" not in r.headers and r.headers["x-up-new"] == "old"
        assert r.headers.get_list("x-up-drop") == ["x", "c1"]
        assert r.headers["x-route"] == "/r/{rest:path}"
        assert "x-content-type-options" in r.headers  # the gateway's security headers still apply

        assert c.get("/r/respond/404").status_code == 410  # second mapping
        assert c.head("/r/respond/404", headers={"X-Map": "yes"}).status_code == 200
        assert c.get("/r/respond/500").status_code == 500

        # encoded, non-JSON and too long bodies go through untouched
        r = c.get("/r/respond/200?gzip=1")
        assert r.headers["content-encoding"] == "gzip" and r.json() == {"a": 1, "secret": "s", "list": [1]}
        r = c.get("/r/respond/200?ctype=text/plain")
        assert r.json() == {"a": 1, "secret": "s", "list": [1]}
        r = c.get("/r/respond/200?chunked=2000")
        assert len(r.json()["big"]) == 2000

        # the gateway's own errors are never transformed (502 stays 502, no edited headers)
        r = c.get("/down/x", headers={"X-Client": "c1"})
        assert r.status_code == 502 and r.json()["type"] == "upstream"
        assert "x-route" not in r.headers and "x-up-drop" not in r.headers

        r = c.get("/hook/respond/404", headers={"X-Client": "c2"})
        assert r.status_code == 404 and r.json() == {"a": 1, "secret": "s", "list": [1]}
        assert r.headers["x-up-new"] == "old" and r.headers["x-route"] == "/hook/{rest:path}"
        assert r.headers.get_list("x-up-drop") == ["x", "c2"]
        assert r.headers["content-type"] == "application/vnd.kairos+json"
        r = c.get("/hook-down/x", headers={"X-Client": "c1"})
        assert r.status_code == 502 and "x-route" not in r.headers and "x-up-drop" not in r.headers
    records = {r["path"] + ("?" + r["query"] if r.get("query") else ""): r
               for r in gw.log_records() if r.get("event") == "access"}
    assert records["/r/respond/200?gzip=1"]["transform_skipped"] == ["response_json: content-encoding gzip"]
    assert records["/r/respond/200?ctype=text/plain"]["transform_skipped"] == ["response_json: not JSON (text/plain)"]
    assert records["/r/respond/200?chunked=2000"]["transform_skipped"] == [
        "response_json: body larger than max_json_body (1000)"]
    assert records["/down/x"]["status"] == 502 and "upstream_status" not in records["/down/x"]


def test_claims_on_a_route_without_auth_is_a_config_error(kairos_cli, tmp_path, echo):
    path = tmp_path / "bad.json"
    route = response_route(echo)
    route["response_transformation"]["headers"].append({"action": "set", "name": "X-Sub", "value": "{claim.sub}"})
    path.write_text(json.dumps({"routers": [route]}))
    result = kairos_cli("validate", str(path))
    assert result.returncode != 0
    assert "routers[0].response_transformation.headers[6].value: {claim.sub} needs auth_required: true" in (
        result.stdout + result.stderr)
