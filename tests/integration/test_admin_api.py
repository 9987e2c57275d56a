"""The admin API through a real gateway and real upstreams."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import httpx
import pytest

from admin_support import (
    ADMIN_TOKEN, SECRETS, VIEWER_TOKEN, admin_client, sha, start_admin_gateway, with_secrets,
)
from ops_helpers import config, route


def fill(path: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    return path


def test_every_endpoint_needs_a_token_and_viewers_never_write_and_no_secret_leaks(gateway, upstream):
    gw = start_admin_gateway(gateway, with_secrets(config(route(upstream, name="users"))))
    seen: list[str] = []
    with admin_client(gw) as admin, admin_client(gw, VIEWER_TOKEN) as viewer, admin_client(gw, "") as anon:
        doc = admin.get("/admin/openapi.json")
        assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.1")
        seen.append(doc.text)
        values = {"id": "users", "version": "1", "backend": f"127.0.0.1:{upstream.port}"}
        operations = [(m.upper(), p) for p, ops in doc.json()["paths"].items() for m in ops]
        assert len(operations) >= 20
        for method, path in operations:
            url = fill(path, values)
            if path.endswith("/stream"):
                for client, ok in ((anon, False), (viewer, True)):
                    with client.stream("GET", url) as r:
                        assert r.status_code == (200 if ok else 401)
                        if ok:
                            first = next(r.iter_lines())
                            assert first.startswith("retry:")
                continue
            r = anon.request(method, url)
            assert r.status_code == 401, (method, path)
            assert r.json()["type"] == "authentication_error" and r.headers["www-authenticate"].startswith("Bearer")
            write = doc.json()["paths"][path][method.lower()]["x-kairos-role"] == "admin"
            r = viewer.request(method, url, json={})
            seen.append(r.text)
            if write:
                assert r.status_code == 403, (method, path)
                assert set(r.json()) >= {"error", "type", "request_id", "timestamp"} and r.json()["type"] == "forbidden"
            else:
                assert r.status_code not in (401, 403), (method, path, r.text)
        # An admin reads everything (and a redacted config PUT back keeps the real secrets).
        for path in ("/admin/status", "/admin/config", "/admin/routes", "/admin/routes/users", "/admin/clusters",
                     "/admin/stats", "/admin/config/history", "/admin/whoami"):
            r = admin.get(path)
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
        current = admin.get("/admin/config")
        assert current.json()["jwt"]["secret"] == "***"
        put = admin.put("/admin/config", json=current.json(), headers={"if-match": current.headers["etag"]})
        assert put.status_code == 200, put.text
        seen.append(put.text)
        on_disk = json.loads(gw.config_path.read_text())
        assert on_disk["jwt"]["secret"] not in ("***",) and on_disk["rate_limit"]["redis_url"].count("***") == 0
        for path in ("/admin/config/history", "/admin/config/history/1", "/admin/config/history/2"):
            r = admin.get(path)
            assert r.status_code == 200, r.text
            seen.append(r.text)
        bad = admin.post("/admin/config/validate", json={"routers": [{"external_path": "x"}], "jwt": {"secret": "short"}})
        seen.append(bad.text)
        assert bad.json()["valid"] is False and any(p.startswith("routers[0]") for p in bad.json()["problems"])
        # Wrong tokens: 401 four times, then this client is throttled, even with a good token.
        with admin_client(gw, "wrong-token-000000000000") as wrong:
            codes = [wrong.get("/admin/status").status_code for _ in range(5)]
        assert codes == [401] * 5
        r = admin.get("/admin/status")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    time.sleep(0.3)
    logs = gw.logs() + gw.stderr()
    records = gw.log_records()
    assert any(r.get("event") == "admin" and r.get("actor") == "watcher" and r.get("status") == 403 for r in records)
    assert any(r.get("event") == "audit" and r.get("actor") == "ops" for r in records)
    for text in seen + [logs]:
        for secret in SECRETS:
            assert secret not in text


def test_writes_need_if_match_validate_compile_swap_write_atomically_and_roll_back(gateway, make_upstream):
    a, b = make_upstream(2)
    gw = start_admin_gateway(gateway, with_secrets(config(route(a, name="users"))))
    os.chmod(gw.config_path, 0o640)
    with admin_client(gw) as admin, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as proxy:
        assert proxy.get("/api/1").headers["x-upstream"] == a.name
        cfg = admin.get("/admin/config")
        etag = cfg.headers["etag"]
        doc = cfg.json()
        doc["routers"][0]["backends"] = [b.backend()]
        assert admin.put("/admin/config", json=doc).status_code == 428
        r = admin.put("/admin/config", json=doc, headers={"if-match": '"stale"'})
        assert r.status_code == 412 and r.json()["type"] == "precondition_failed"

        # Invalid: 422 with JSON paths; neither the gateway nor the file changes.
        before = gw.config_path.read_bytes()
        broken = json.loads(json.dumps(doc))
        broken["routers"][0]["backends"][0]["port"] = 70000
        r = admin.put("/admin/config", json=broken, headers={"if-match": etag})
        assert r.status_code == 422
        assert any(p.startswith("routers[0].backends[0].port") for p in r.json()["problems"])
        assert gw.config_path.read_bytes() == before
        assert proxy.get("/api/1").headers["x-upstream"] == a.name

        inode = gw.config_path.stat().st_ino
        r = admin.put("/admin/config", json=doc, headers={"if-match": etag})
        assert r.status_code == 200, r.text
        assert r.json()["summary"]["routes_changed"] == ["users"]
        assert admin.get("/admin/status").json()["last_reload"]["trigger"] == "admin"
        assert proxy.get("/api/1").headers["x-upstream"] == b.name  # live at once, no reload wait
        st = gw.config_path.stat()
        assert st.st_ino != inode and stat.S_IMODE(st.st_mode) == 0o640  # renamed over, mode kept
        assert not [p for p in os.listdir(gw.config_path.parent) if p.endswith(".tmp")]
        assert json.loads(gw.config_path.read_text())["routers"][0]["backends"][0]["port"] == b.port
        r2 = admin.put("/admin/config", json=doc, headers={"if-match": etag})
        assert r2.status_code == 412  # the first write changed the ETag

        # Routes: add, patch, delete (each with the new ETag).
        etag = r.headers["etag"]
        new = route(a, external="/v2/{id}", internal="/echo/{id}", methods=["GET"])
        r = admin.post("/admin/routes", json=new, headers={"if-match": etag})
        assert r.status_code == 201, r.text
        rid, etag = r.json()["route_id"], r.headers["etag"]
        assert rid.startswith("r-") and proxy.get("/v2/7").headers["x-upstream"] == a.name
        r = admin.patch(f"/admin/routes/{rid}", json={"backends": [b.backend()]}, headers={"if-match": etag})
        assert r.status_code == 200, r.text
        etag = r.headers["etag"]
        assert proxy.get("/v2/7").headers["x-upstream"] == b.name
        r = admin.request("DELETE", f"/admin/routes/{rid}", headers={"if-match": etag})
        assert r.status_code == 200 and r.json()["summary"]["routes_removed"] == [rid]
        assert proxy.get("/v2/7").status_code == 404
        assert admin.get(f"/admin/routes/{rid}").status_code == 404

        # History and rollback to the file as it was first found.
        history = admin.get("/admin/config/history").json()
        assert [h["version"] for h in history] == [5, 4, 3, 2, 1]
        assert history[0]["actor"] == "ops" and history[-1]["actor"] == "file"
        etag = admin.get("/admin/config").headers["etag"]
        r = admin.post("/admin/config/rollback/1", headers={"if-match": etag})
        assert r.status_code == 200, r.text
        assert proxy.get("/api/1").headers["x-upstream"] == a.name
        assert json.loads(gw.config_path.read_text())["jwt"]["secret"] != "***"
        assert admin.post("/admin/config/rollback/99", headers={"if-match": r.headers["etag"]}).status_code == 404
    audit = [r for r in gw.log_records() if r.get("event") == "audit"]
    assert len(audit) == 5 and audit[-1]["action"] == "rollback to version 1"

    # A token rotated in the file works after the reload; the old one no longer does.
    rotated = json.loads(gw.config_path.read_text())
    rotated["admin"]["tokens"][1]["token_sha256"] = sha("rotated-viewer-token-0123456789")
    gw.rewrite_config(rotated)
    gw.wait_for_log(lambda rec: rec.get("event") == "config_reloaded" and rec.get("trigger") == "file")
    with admin_client(gw, "rotated-viewer-token-0123456789") as new, admin_client(gw, VIEWER_TOKEN) as old:
        assert new.get("/admin/status").status_code == 200
        assert old.get("/admin/status").status_code == 401


def test_drain_lets_in_flight_finish_and_stats_count_known_traffic(gateway, make_upstream):
    a, b = make_upstream(2)
    slow = route(a, external="/slow", internal="/slow", methods=["GET"])
    slow["backends"] = [a.backend(), b.backend()]
    api = route(a, name="api")
    api["backends"] = [a.backend(), b.backend()]
    errors = route(a, name="errors", external="/err", internal="/status/500", methods=["GET"])
    cached = route(a, name="cached", external="/c/{id}", methods=["GET"], cache={"enabled": True, "ttl_secs": 60})
    gw = start_admin_gateway(gateway, config(api, slow, errors, cached))
    with admin_client(gw) as admin, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as proxy:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(proxy.get("/slow?ms=800").status_code))
        t.start()
        deadline = time.monotonic() + 5
        while not any(c["in_flight"] for c in admin.get("/admin/clusters").json()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = next(c for c in admin.get("/admin/clusters").json() if c["in_flight"])
        r = admin.post(f"/admin/clusters/{busy['address']}/drain")
        assert r.status_code == 200 and r.json()["drained"] is True and r.json()["available"] is False
        other = a if busy["address"].endswith(f":{b.port}") else b
        got = {proxy.get(f"/api/{i}").headers["x-upstream"] for i in range(6)}
        assert got == {other.name}
        t.join(5)
        assert results == [200]  # the in-flight request finished on the drained backend
        assert admin.post(f"/admin/clusters/{busy['address'].partition('://')[2]}/undrain").json()["drained"] is False
        assert len({proxy.get(f"/api/{i}").headers["x-upstream"] for i in range(6)}) == 2
        assert admin.post("/admin/clusters/10.9.9.9:1/drain").status_code == 404

        # Cache purge: by route id, by path prefix; an unknown route is a 404.
        for _ in range(2):
            last = proxy.get("/c/1")
        assert last.headers["x-cache"] == "HIT"
        r = admin.delete("/admin/cache", params={"route": "cached"})
        assert r.status_code == 200 and r.json()["removed"] == 1
        assert proxy.get("/c/1").headers["x-cache"] == "MISS"
        assert admin.delete("/admin/cache", params={"prefix": "/c/"}).json()["removed"] == 1
        assert admin.delete("/admin/cache", params={"route": "nope"}).status_code == 404
        with admin_client(gw, VIEWER_TOKEN) as viewer:
            assert viewer.delete("/admin/cache").status_code == 403

        for i in range(20):
            assert proxy.get(f"/api/{i}").status_code == 200
        for _ in range(5):
            assert proxy.get("/err").status_code == 500
        deadline = time.monotonic() + 5
        while True:
            stats = {r["id"]: r["windows"]["1m"] for r in admin.get("/admin/stats").json()["routes"]}
            if stats["api"]["requests"] >= 32 and stats["errors"]["requests"] >= 5:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)
        assert stats["api"]["requests"] == 32 and stats["api"]["errors"] == 0  # 6 + 6 + 20
        assert stats["errors"]["requests"] == 5 and stats["errors"]["error_rate"] == 1.0
        assert stats["api"]["p50_ms"] is not None and stats["api"]["p99_ms"] >= stats["api"]["p50_ms"]
        assert stats["api"]["rps"] > 0


def test_one_admin_port_for_several_workers(gateway, make_upstream):
    a, b = make_upstream(2)
    gw = start_admin_gateway(gateway, config(route(a, name="users")), workers=2)
    with admin_client(gw) as admin, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as proxy:
        status = admin.get("/admin/status").json()
        assert status["workers"] == 2 and status["mode"] == "workers"
        for i in range(30):
            assert proxy.get(f"/api/{i}").status_code == 200
        deadline = time.monotonic() + 6
        while admin.get("/admin/stats").json()["routes"][0]["windows"]["1m"]["requests"] < 30:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert admin.get("/admin/stats").json()["routes"][0]["windows"]["1m"]["requests"] == 30
        cfg = admin.get("/admin/config")
        doc = cfg.json()
        doc["routers"][0]["backends"] = [b.backend()]
        r = admin.put("/admin/config", json=doc, headers={"if-match": cfg.headers["etag"]})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 10
        while sum(1 for rec in gw.log_records() if rec.get("event") == "config_reloaded") < 2:
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)
        assert {proxy.get(f"/api/{i}").headers["x-upstream"] for i in range(20)} == {b.name}
        etag = r.headers["etag"]
        # Drain reaches every worker (the drained-backends file, then SIGHUP).
        reloads = sum(1 for rec in gw.log_records() if rec.get("event") == "config_reloaded")
        r = admin.post(f"/admin/clusters/127.0.0.1:{b.port}/drain")
        assert r.status_code == 200 and r.json()["drained"] is True
        while sum(1 for rec in gw.log_records() if rec.get("event") == "config_reloaded") < reloads + 2:
            assert time.monotonic() < deadline + 10, gw.output()
            time.sleep(0.1)
        assert {proxy.get(f"/api/{i}").status_code for i in range(10)} == {503}  # its only backend is drained
        admin.post(f"/admin/clusters/127.0.0.1:{b.port}/undrain")
        broken = json.loads(json.dumps(doc))
        broken["routers"][0]["methods"] = ["FETCH"]
        r = admin.put("/admin/config", json=broken, headers={"if-match": etag})
        assert r.status_code == 422 and r.json()["problems"][0].startswith("routers[0].methods")


def test_startup_refusals(tmp_path, upstream, capsys, monkeypatch):
    from kairos.cli import main

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    def write(admin: dict) -> str:
        p = tmp_path / f"c{len(os.listdir(tmp_path))}.json"
        p.write_text(json.dumps(config(route(upstream), admin=admin)))
        return str(p)

    code, err = run("validate", write({"enabled": True}))
    assert code == 1 and "admin: enabled without any token" in err
    token = {"name": "ops", "role": "admin", "token_env": "NOPE_TOKEN"}
    code, err = run("validate", write({"enabled": True, "host": "0.0.0.0", "tokens": [token]}))
    assert code == 1 and '"public": true' in err
    code, err = run("validate", write({"enabled": True, "tokens": [{"name": "ops", "role": "admin", "token": "x"}]}))
    assert code == 1 and "unknown key 'token'" in err
    assert run("validate", write({"enabled": True, "host": "0.0.0.0", "public": True, "tokens": [token]}))[0] == 0
    # serve stops before anything listens: the token's variable is missing.
    # serve sets these: setenv first so that monkeypatch removes them again afterwards
    # (a delenv of an absent variable records nothing to undo).
    for name in ("NOPE_TOKEN", "KAIROS_HOST", "KAIROS_PORT", "KAIROS_CONFIG_PATH"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr("kairos.observability.logging.configure_logging", lambda level: None)
    code, err = run("serve", "--config", write({"enabled": True, "tokens": [token]}), "--port", "1")
    assert code == 1 and "NOPE_TOKEN is not set" in err
