"""schemathesis against the OpenAPI document, through a real gateway's admin listener.

Checks every operation (the event stream aside) with schema-generated requests: no 5xx,
documented status codes and content types, responses matching their schemas. Left out:
`ignored_auth` (it sends invalid tokens, which the throttle then answers 429: the auth matrix
in test_admin_api.py covers it) and `positive_data_acceptance` (a schema-valid write still
depends on state: 412 without the current ETag, 422 when the config does not validate).
"""

from __future__ import annotations

import httpx
import pytest

from admin_support import ADMIN_TOKEN, start_admin_gateway, with_secrets
from ops_helpers import config, route

schemathesis = pytest.importorskip("schemathesis")


def test_every_operation_conforms_to_the_document(gateway, upstream):
    from hypothesis import HealthCheck, given, settings
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
