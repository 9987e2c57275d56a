"""Property runs against the OpenAPI document, through a real gateway's admin listener:
schemathesis (schema-generated requests), and Hypothesis sending arbitrary JSON.

Checks every operation (the event stream aside) with schema-generated requests: no 5xx,
documented status codes and content types, responses matching their schemas. Left out:
`ignored_auth` (it sends invalid tokens, which the throttle then answers 429: the auth matrix
in test_admin_api.py covers it) and `positive_data_acceptance` (a schema-valid write still
depends on state: 412 without the current ETag, 422 when the config does not validate).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin_support import ADMIN_TOKEN, start_admin_gateway, with_secrets
from ops_helpers import config, route



def test_every_operation_conforms_to_the_document(gateway, upstream):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import ignored_auth, positive_data_acceptance

    gw = start_admin_gateway(gateway, with_secrets(config(route(upstream, name="users"))))
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    document = httpx.get(gw.admin_url + "/admin/openapi.json", headers=headers, trust_env=False).json()
    schema = schemathesis.openapi.from_dict(document)
    failures = []
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/stream"):
            continue

        @settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            case.call_and_validate(base_url=gw.admin_url, headers=headers,
                                   excluded_checks=[ignored_auth, positive_data_acceptance])

        try:
            run()
        except BaseException as exc:  # hypothesis/schemathesis raise groups
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:2000])
        checked += 1
    assert checked >= 20
    assert not failures, "\n\n".join(failures)


# --------------------------------------------------------------------------- property run over the OpenAPI document

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def test_openapi_property_run(gateway, upstream):
    """Arbitrary JSON bodies, path values and If-Match values against a real admin listener."""
    gw = start_admin_gateway(gateway, with_secrets({"version": 1, "routers": [
        {"name": "users", "external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"],
         "backends": [upstream.backend()]}]}))
    client = httpx.Client(base_url=gw.admin_url, trust_env=False, timeout=10)
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
