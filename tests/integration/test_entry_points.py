"""The three ways in: `uvicorn kairos.app:app`, `kairos.create_app()` mounted in a host app, and `kairos serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, free_port


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("never became healthy")


def config(up) -> dict:
    return {
        "routers": [
            {"external_path": "/api/{rest:path}", "internal_path": "/{rest}", "methods": ["GET"], "host": up.host, "port": up.port}
        ]
    }


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAIROS_")}
    base["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.Popen(argv, cwd=cwd, env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_uvicorn_entry_point_reads_kairos_config_path(tmp_path, upstream):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(config(upstream)))
    port = free_port()
    proc = run(
        [sys.executable, "-m", "uvicorn", "kairos.app:app", "--port", str(port), "--no-server-header", "--no-date-header"],
        tmp_path,
        {"KAIROS_CONFIG_PATH": str(path)},
    )
    try:
        wait_health(f"http://127.0.0.1:{port}/health", proc)
        r = httpx.get(f"http://127.0.0.1:{port}/api/echo?via=uvicorn", trust_env=False)
        assert r.status_code == 200
        assert r.json()["raw_path"] == "/echo?via=uvicorn"
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_default_config_path_is_cwd_config_json(tmp_path, upstream):
    (tmp_path / "config.json").write_text(json.dumps(config(upstream)))
    port = free_port()
    proc = run([sys.executable, "-m", "uvicorn", "kairos.app:app", "--port", str(port)], tmp_path, {})
    try:
        wait_health(f"http://127.0.0.1:{port}/health", proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


HOST_APP = textwrap.dedent(
    """
    import json, sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    import kairos

    gateway_app = kairos.create_app(json.loads(sys.argv[2]))

    async def home(request):
        return PlainTextResponse("host app")

    # No lifespan wiring for the mounted app: kairos starts its pool on first use.
    host = Starlette(routes=[Route("/", home), Mount("/gw", app=gateway_app)])
    uvicorn.run(host, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def test_create_app_mounted_under_a_prefix_without_its_lifespan(tmp_path, upstream):
    script = tmp_path / "host.py"
    script.write_text(HOST_APP)
    port = free_port()
    proc = run([sys.executable, str(script), str(port), json.dumps(config(upstream))], tmp_path, {})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_health(base + "/gw/health", proc)
        assert httpx.get(base + "/", trust_env=False).text == "host app"
        r = httpx.get(base + "/gw/api/echo/a%20b?q=1", trust_env=False)
        assert r.status_code == 200, r.text
        assert r.json()["raw_path"] == "/echo/a%20b?q=1"
        r = httpx.get(base + "/gw/nope", trust_env=False)
        assert r.status_code == 404 and r.json()["type"] == "route_not_found"
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


async def test_create_app_closes_its_pool_on_request(upstream):
    import kairos

    app = kairos.create_app(config(upstream))
    gateway = app.state.gateway
    assert not gateway.upstream.started
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        r = await c.get("/api/echo")
        assert r.status_code == 200
    assert gateway.upstream.started
    await gateway.aclose()
    assert not gateway.upstream.started


def test_kairos_serve_runs_the_config(gateway, upstream, sync_client):
    gw = gateway(config(upstream))
    assert sync_client.get(gw.url + "/api/echo").status_code == 200
    body = sync_client.get(gw.url + "/health").json()
    assert body["status"] == "healthy"
    assert gw.stop() == 0
