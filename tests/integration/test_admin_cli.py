"""`kairos match` offline, and status/routes/diff/apply/drain against a running gateway."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import httpx
import pytest

from admin_support import ADMIN_TOKEN, VIEWER_TOKEN, start_admin_gateway
from tests.conftest import REPO_ROOT, _hermetic_env, free_port
from ops_helpers import config, route


class InProcess:
    """`kairos ARGS` run in this process (a subprocess per call costs ~1 s of imports): returns (code, out, err)."""

    def __init__(self, monkeypatch, capsys) -> None:
        self.monkeypatch = monkeypatch
        self.capsys = capsys

    def __call__(self, *args, env: dict[str, str] | None = None):
        from kairos.cli import main

        for name in ("KAIROS_ADMIN_TOKEN", "KAIROS_ADMIN_URL"):
            self.monkeypatch.setenv(name, "")  # recorded, so the end of the test removes it
            self.monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            self.monkeypatch.setenv(name, value)
        self.capsys.readouterr()
        code = main([str(a) for a in args])
        captured = self.capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture
def kairos_run(monkeypatch, capsys):
    return InProcess(monkeypatch, capsys)


def test_match_offline(kairos_run, tmp_path, upstream):
    kairos_cli = kairos_run
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config(route(upstream, name="users", rate_limit={"requests_per_window": 5}))))
    r = kairos_cli("match", path, "GET", "http://x/api/42?q=1")
    assert r.returncode == 0 and "users" in r.stdout and "/echo/42?q=1" in r.stdout and "rate_limit" in r.stdout
    r = kairos_cli("match", path, "DELETE", "/api/42", "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["status"] == 405
    assert kairos_cli("match", path, "GET", "/nothing").returncode == 3


def test_cli_against_a_running_gateway(gateway, kairos_run, make_upstream, tmp_path):
    kairos_cli = kairos_run
    a, b = make_upstream(2)
    gw = start_admin_gateway(gateway, config(route(a, name="users")))
    env = {"KAIROS_ADMIN_TOKEN": ADMIN_TOKEN, "KAIROS_ADMIN_URL": gw.admin_url}

    r = kairos_cli("status", env=env)
    assert r.returncode == 0 and "single-process" in r.stdout
    assert json.loads(kairos_cli("status", "--json", env=env).stdout)["workers"] == 1
    r = kairos_cli("routes", "--admin", gw.admin_url, env={"KAIROS_ADMIN_TOKEN": VIEWER_TOKEN})
    assert r.returncode == 0 and r.stdout.splitlines()[1].startswith("users")

    # diff: the same file -> 0; a changed copy -> 8 with the route named.
    assert kairos_cli("diff", gw.config_path, env=env).returncode == 0
    changed = json.loads(gw.config_path.read_text())
    changed["routers"][0]["backends"] = [b.backend()]
    new_file = tmp_path / "new.json"
    new_file.write_text(json.dumps(changed))
    r = kairos_cli("diff", new_file, env=env)
    assert r.returncode == 8 and "routes changed: users" in r.stdout and f'"port": {b.port}' in r.stdout

    # apply on a terminal asks; "n" leaves everything as it was.
    argv = [sys.executable, "-m", "kairos", "apply", str(new_file)]
    controller, child = pty.openpty()
    proc = subprocess.Popen(argv, stdin=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_hermetic_env(env), cwd=str(REPO_ROOT))
    os.close(child)
    os.write(controller, b"n\n")
    out, err = proc.communicate(timeout=30)
    os.close(controller)
    assert proc.returncode == 7, (out, err)
    assert httpx.get(gw.url + "/api/1", trust_env=False).headers["x-upstream"] == a.name

    # Not a terminal: no question. A viewer is refused (4); an admin applies.
    assert kairos_cli("apply", new_file, env={**env, "KAIROS_ADMIN_TOKEN": VIEWER_TOKEN}).returncode == 4
    r = kairos_cli("apply", new_file, env=env)
    assert r.returncode == 0 and "applied: version 2" in r.stdout, r.stdout + r.stderr
    assert httpx.get(gw.url + "/api/1", trust_env=False).headers["x-upstream"] == b.name
    assert kairos_cli("apply", new_file, "--yes", env=env).stdout.startswith("nothing to apply")

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**changed, "routers": [{**changed["routers"][0], "methods": ["FETCH"]}]}))
    r = kairos_cli("apply", broken, "--yes", env=env)
    assert r.returncode == 1 and "routers[0].methods" in r.stderr

    r = kairos_cli("drain", f"127.0.0.1:{b.port}", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["drained"] is True
    assert kairos_cli("undrain", f"127.0.0.1:{b.port}", env=env).returncode == 0
    assert kairos_cli("drain", "10.1.1.1:1", env=env).returncode == 3
    assert kairos_cli("status", env={**env, "KAIROS_ADMIN_TOKEN": "x" * 20}).returncode == 4
    assert kairos_cli("status", env={**env, "KAIROS_ADMIN_URL": f"http://127.0.0.1:{free_port()}"}).returncode == 6
    assert kairos_cli("status", env={"KAIROS_ADMIN_URL": gw.admin_url}).returncode == 2
