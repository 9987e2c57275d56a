"""The house rules of issue 9: no import loops, one `send` wrapper on a proxied response."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import pytest

import kairos
from kairos.proxy.exchange import Exchange

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO.parent / "shared" / "tools" / "import_cycles.py"


@pytest.mark.skipif(not TOOL.is_file(), reason="../shared/tools/import_cycles.py is not here")
def test_no_import_loops():
    """What `python ../shared/tools/import_cycles.py kairos` prints, run in this process: nothing."""
    spec = importlib.util.spec_from_file_location("import_cycles", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    limit = sys.getrecursionlimit()
    try:
        loops = tool.cycles(tool.edges(REPO / "kairos"))
    finally:
        sys.setrecursionlimit(limit)  # the tool raises it for the whole process
    assert loops == [], loops


class _Answer:
    status = 200
    raw_headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    read_timeout = None

    def __init__(self) -> None:
        self.chunks = [b"ok"]

    async def read(self) -> bytes:
        return self.chunks.pop() if self.chunks else b""

    def release(self) -> None:
        pass


async def test_a_proxied_response_crosses_one_send_wrapper():
    app = kairos.create_app({
        "cors": {"allowed_origins": ["https://a.example"]},
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 100, "window_duration": 60},
        "ip_allow": ["0.0.0.0/0", "::/0"],
        "routers": [{"external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"],
                     "host": "http://127.0.0.1", "port": 9}],
    })

    async def answer(*args, **kwargs):
        return _Answer()

    app.state.gateway.upstream.request = answer
    callers: list[tuple[str, str]] = []

    async def server_send(message):
        # Who called the server's send, and who called that.
        callers.append((sys._getframe(1).f_code.co_qualname, sys._getframe(2).f_code.co_name))

    scope = {"type": "http", "method": "GET", "path": "/api/1", "raw_path": b"/api/1", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"gw"), (b"origin", b"https://a.example")],
             "client": ("127.0.0.1", 1234), "scheme": "http", "http_version": "1.1"}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    await app(scope, receive, server_send)
    assert callers and all(c == ("Exchange.wrap.<locals>.exchange_send", "relay_response") for c in callers), callers
    assert scope["kairos.exchange"].status == 200
    await app.state.gateway.aclose()


async def test_headers_from_every_hook_still_arrive(upstream):
    app = kairos.create_app({
        "cors": {"allowed_origins": ["https://a.example"]},
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 100, "window_duration": 60},
        "routers": [{"external_path": "/api/{rest:path}", "internal_path": "/{rest}", "methods": ["GET"],
                     "host": upstream.host, "port": upstream.port}],
    })
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/api/x", headers={"origin": "https://a.example", "x-request-id": "rid-7"})
    assert r.headers["x-request-id"] == "rid-7"
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    assert r.headers["x-ratelimit-limit"] == "100"
    assert r.headers["x-content-type-options"] == "nosniff"
    await app.state.gateway.aclose()


async def test_a_proxied_request_leaves_no_reference_cycles(upstream):
    """Per-request objects are freed by reference counting, not left to the garbage collector
    (a cycle per request made every request measurably slower)."""
    import gc

    app = kairos.create_app({
        "cors": {"allowed_origins": ["https://a.example"]},
        "rate_limit": {"strategy": "PerIP", "requests_per_window": 1000, "window_duration": 60},
        "routers": [{"external_path": "/api/{rest:path}", "internal_path": "/{rest}", "methods": ["GET", "POST"],
                     "host": upstream.host, "port": upstream.port}],
    })

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def server_send(message):
        pass

    def scope(method: str) -> dict:
        headers = [(b"host", b"gw"), (b"origin", b"https://a.example")]
        if method == "POST":
            headers.append((b"content-length", b"2"))
        return {"type": "http", "method": method, "path": "/api/x", "raw_path": b"/api/x", "query_string": b"",
                "root_path": "", "headers": headers, "client": ("127.0.0.1", 1234), "scheme": "http",
                "http_version": "1.1"}

    await app(scope("GET"), receive, server_send)  # warm caches first
    gc.collect()
    gc.disable()
    try:
        for method in ("GET", "POST", "GET", "POST"):
            await app(scope(method), receive, server_send)
        assert gc.collect() == 0
    finally:
        gc.enable()
    await app.state.gateway.aclose()
