"""Admin pieces in process: tokens, throttle, redaction, percentiles."""

from __future__ import annotations

import json
import re

import pytest

from admin_support import (
    ADMIN_TOKEN, JWT_SECRET, REDIS_PASSWORD, TOKEN_ENV, VIEWER_TOKEN, admin_block, sha, with_secrets,
)
from kairos.admin.document import redacted, restore_secrets, route_id
from kairos.admin.stats import percentile
from kairos.admin.tokens import FailureThrottle, TokenSetupError, TokenTable
from kairos.config.admin import AdminConfig


def test_tokens_are_hashed_and_env_tokens_must_exist():
    cfg = AdminConfig.model_validate(admin_block(5901))
    table = TokenTable.from_config(cfg, {TOKEN_ENV: ADMIN_TOKEN})
    assert table.identify(ADMIN_TOKEN).role == "admin"
    assert table.identify(VIEWER_TOKEN).role == "viewer"
    assert table.identify("nope") is None and table.identify(ADMIN_TOKEN + " ") is None
    with pytest.raises(TokenSetupError, match=TOKEN_ENV):
        TokenTable.from_config(cfg, {})
    with pytest.raises(TokenSetupError, match="shorter than 16"):
        TokenTable.from_config(cfg, {TOKEN_ENV: "short"})


def test_throttle_blocks_after_repeated_failures_then_forgets():
    now = [0.0]
    t = FailureThrottle(limit=3, window_s=10, block_s=30, clock=lambda: now[0])
    for _ in range(2):
        t.failed("a")
    assert t.retry_after("a") == 0
    t.failed("a")
    assert t.retry_after("a") == 30 and t.retry_after("b") == 0
    now[0] = 31
    assert t.retry_after("a") == 0


def test_redaction_and_restore_round_trip():
    doc = with_secrets({"routers": [{"name": "x", "external_path": "/a", "internal_path": "/a", "methods": ["GET"],
                                     "host": "http://h", "port": 1}], "admin": admin_block(5901)})
    shown = json.dumps(redacted(doc))
    for secret in (JWT_SECRET, REDIS_PASSWORD, sha(VIEWER_TOKEN)):
        assert secret not in shown
    assert restore_secrets(json.loads(shown), doc) == doc
    edits = {"headers": [{"action": "set", "name": "X-Plain", "value": "visible"},
                         {"action": "set", "name": "Authorization", "value": "Bearer hidden-credential"}]}
    shown = redacted(edits)
    assert shown["headers"][0]["value"] == "visible" and shown["headers"][1]["value"] == "***"
    shown["headers"].reverse()  # reordered in an editor: each secret stays with its header
    assert restore_secrets(shown, edits)["headers"][0]["value"] == "Bearer hidden-credential"
    assert route_id({"methods": ["post", "GET"], "external_path": "/a"}) == route_id({"methods": ["GET", "POST"], "external_path": "/a"})
    assert re.fullmatch(r"r-[0-9a-f]{10}", route_id({"methods": ["GET"], "external_path": "/a"}))


def test_percentile_interpolates_inside_buckets():
    buckets = [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert percentile(buckets, 0.5) == pytest.approx(0.01)
    assert percentile(buckets, 0.75) == pytest.approx(0.055)
    assert percentile([], 0.5) is None


async def test_a_failed_write_back_leaves_the_previous_config_live(tmp_path, monkeypatch):
    """The file cannot be written (disk full): 500, and the running gateway goes back to the old config."""
    import httpx

    from kairos.admin.api import AdminState, create_admin_app
    from kairos.admin.control import LiveControl
    from kairos.admin.store import ConfigStore
    from kairos.config import load_config
    from kairos.gateway import Gateway
    from kairos.upstream.drain import write_drained

    def router(port):
        return {"name": "users", "external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": port}]}

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"routers": [router(9001)], "admin": admin_block(5901)}))
    monkeypatch.setenv(TOKEN_ENV, ADMIN_TOKEN)
    config = load_config(str(path))
    gateway = Gateway(config, str(path))
    write_drained(str(path), ["http://127.0.0.1:9001"])  # in maintenance: must stay so after the revert
    state = AdminState(LiveControl(gateway), str(path), TokenTable.from_config(config.admin))

    def full(self, document):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ConfigStore, "write", full)
    before = path.read_bytes()
    transport = httpx.ASGITransport(app=create_admin_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin",
                                 headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        current = await admin.get("/admin/config")
        doc = current.json()
        doc["routers"][0]["backends"][0]["port"] = 9002
        r = await admin.put("/admin/config", json=doc, headers={"if-match": current.headers["etag"]})
    assert r.status_code == 500 and "previous config stays live" in r.json()["error"]
    assert path.read_bytes() == before
    assert [(b.port, b.drained) for b in gateway.runtime.backends.values()] == [(9001, True)]
    assert gateway.config.routers[0].backend_list[0].port == 9001


def test_router_id_of_a_parsed_router_is_the_documents_route_id():
    from kairos.admin.document import router_id
    from kairos.config import parse_config

    routers = [{"external_path": "/a/{id}", "internal_path": "/{id}", "methods": ["post", "GET"],
                "backends": [{"host": "http://127.0.0.1", "port": 9001}]},
               {"name": "named", "external_path": "/b", "internal_path": "/b", "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": 9001}]}]
    cfg = parse_config({"routers": routers})
    ids = [router_id(rc) for rc in cfg.routers]
    assert ids == [route_id(r) for r in routers] == [route_id(rc.model_dump(exclude_none=True)) for rc in cfg.routers]
    assert ids[0].startswith("r-") and ids[1] == "named"
