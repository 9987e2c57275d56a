"""Config on the command line: kairos validate / serve / routes / schema, uvicorn's entry point (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.test_config import route


# --- the command line ---------------------------------------------------------------------------


def write(tmp_path, data, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_validate_ok(kairos_cli, tmp_path):
    path = write(tmp_path, {"routers": [route(), route(external_path="/b", internal_path="/b", port=3002)]})
    result = kairos_cli("validate", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: valid (2 routes, 2 backends)"


def test_validate_lists_every_problem_and_exits_1(kairos_cli, tmp_path):
    path = write(tmp_path, {"routers": [route(port=0), route(methods=["BREW"], external_path="/b", internal_path="/b")]})
    result = kairos_cli("validate", path)
    assert result.returncode == 1
    assert "routers[0].port: must be 1-65535" in result.stderr
    assert "routers[1].methods: unknown method 'BREW'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_refuses_an_invalid_config(kairos_cli, tmp_path):
    path = write(tmp_path, {"routers": [route(port=0)]})
    result = kairos_cli("serve", "--config", path, "--port", "1")
    assert result.returncode == 1
    assert "routers[0].port: must be 1-65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorn_entry_point_refuses_an_invalid_config(tmp_path):
    path = write(tmp_path, "{ not json")
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "kairos.app:app", "--port", "1"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
        env={"KAIROS_CONFIG_PATH": str(path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])},
    )
    assert result.returncode != 0
    assert "invalid JSON at line 1, column 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_routes_table(kairos_cli, tmp_path):
    path = write(
        tmp_path,
        {
            "jwt": {"secret": "x" * 32},
            "routers": [
                route(auth_required=True),
                route(external_path="/w", internal_path="/w", host=None, port=None, load_balancing_strategy="weighted",
                      backends=[{"host": "http://a", "port": 1, "weight": 3}, {"host": "http://b", "port": 2}]),
            ],
        },
    )
    result = kairos_cli("routes", path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["METHODS", "EXTERNAL", "PATH", "BACKENDS", "->", "INTERNAL", "PATH", "STRATEGY", "AUTH"]
    assert lines[1].split() == ["GET", "/api/users/{id}", "http://127.0.0.1:3001", "->", "/users/{id}", "round_robin", "jwt"]
    assert "http://a:1 (w3), http://b:2 (w1) -> /w" in lines[2] and "weighted" in lines[2]


def test_schema_is_json_schema_of_the_models(kairos_cli):
    result = kairos_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "GatewayConfig"
    assert {"routers", "jwt", "rate_limit", "server", "timeout_ms"} <= set(schema["properties"])
    assert "RouterConfig" in schema["$defs"]
