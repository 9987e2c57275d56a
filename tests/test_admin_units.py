"""Admin pieces in process: tokens, throttle, redaction, percentiles, and a property run over the OpenAPI document."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from admin_support import ADMIN_TOKEN, JWT_SECRET, REDIS_PASSWORD, TOKEN_ENV, VIEWER_TOKEN, admin_block, sha, with_secrets
from kairos.admin.document import redacted, restore_secrets, route_id
from kairos.admin.stats import percentile
from kairos.admin.tokens import FailureThrottle, TokenSetupError, TokenTable
from kairos.config import parse_config
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


# --------------------------------------------------------------------------- property run over the OpenAPI document

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def admin_app(tmp_path_factory):
    import os

    from kairos.admin.api import AdminState, create_admin_app
    from kairos.admin.control import LiveControl
    from kairos.app import create_app

    path = tmp_path_factory.mktemp("admin") / "config.json"
    cfg = with_secrets({"version": 1, "routers": [{"name": "users", "external_path": "/api/{id}", "internal_path": "/{id}",
                                                   "methods": ["GET"], "host": "http://127.0.0.1", "port": 9}],
                        "admin": admin_block(5901)})
    path.write_text(json.dumps(cfg))
    gateway_app = create_app(str(path))
    gateway = gateway_app.state.gateway
    tokens = TokenTable.from_config(gateway.config.admin, {TOKEN_ENV: ADMIN_TOKEN})
    state = create_admin_app(AdminState(LiveControl(gateway), str(path), tokens))
    state_obj = state.app.app.state.admin
    state_obj.throttle.limit = 10**9
    os.environ.pop(TOKEN_ENV, None)
    return state


def test_openapi_property_run(admin_app):
    client = TestClient(admin_app, raise_server_exceptions=True)
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    doc = client.get("/admin/openapi.json", headers=headers).json()
    resolver_doc = {"components": doc["components"]}
    operations = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items() if not p.endswith("/stream")]

    def check(method: str, path: str, op: dict, params: dict, body, if_match) -> None:
        url = path
        for name, value in params.items():
            url = url.replace("{" + name + "}", value)
        h = dict(headers)
        if if_match == "current":
            h["if-match"] = client.get("/admin/config", headers=headers).headers["etag"]
        elif if_match is not None:
            h["if-match"] = if_match
        r = client.request(method.upper(), url, headers=h, content=json.dumps(body))
        assert r.status_code != 500, (method, url, r.text)
        documented = set(op["responses"]) | {"404"}
        assert str(r.status_code) in documented, (method, url, r.status_code, r.text)
        data = r.json()
        if r.status_code >= 400:
            assert {"error", "type", "request_id", "timestamp"} <= set(data)
        else:
            schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
            jsonschema.validate(data, {**schema, **resolver_doc})

    for method, path, op in operations:
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
        params_st = st.fixed_dictionaries({n: st.sampled_from(["users", "1", "x%2Fy", "127.0.0.1:9"]) | st.text(
            alphabet=st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=8) for n in names})

        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
        @given(params=params_st, body=json_values, if_match=st.sampled_from([None, "current", '"nope"']))
        def run(params, body, if_match):
            check(method, path, op, params, body, if_match)

        run()
