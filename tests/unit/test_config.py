"""Config: kairos-rs files load unchanged; every problem is named with its JSON path, all at once."""

from __future__ import annotations

import json

import pytest

from kairos.config import ConfigError, load_config, parse_config
from tests.conftest import shared_compat_dir


def route(**over):
    r = {
        "external_path": "/api/users/{id}",
        "internal_path": "/users/{id}",
        "methods": ["GET"],
        "host": "http://127.0.0.1",
        "port": 3001,
    }
    r.update(over)
    return r


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, use_env=False)
    return info.value.problems


def one_problem(data) -> str:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    return problems[0]


# --- kairos-rs compatibility ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["kairos-rs-config.json", "kairos-rs-config-advanced.json", "kairos-rs-config-transform.json"]
)
def test_kairos_rs_files_load_unchanged(name):
    folder = shared_compat_dir()
    if folder is None:
        pytest.skip("../shared/compat is not present next to this checkout")
    config = load_config(folder / name, use_env=False)
    raw = json.loads((folder / name).read_text())
    assert len(config.routers) == len(raw["routers"])
    # Blocks implemented by later features are parsed and kept.
    assert config.jwt is not None and config.jwt.issuer == raw["jwt"]["issuer"]
    assert config.jwt.required_claims == raw["jwt"]["required_claims"]
    assert config.jwt.secret.get_secret_value() == raw["jwt"]["secret"]
    assert config.rate_limit.requests_per_window == raw["rate_limit"]["requests_per_window"]
    assert config.rate_limit.window_type == raw["rate_limit"]["window_type"]
    for rc, rr in zip(config.routers, raw["routers"]):
        assert rc.external_path == rr["external_path"]
        if "retry" in rr:
            assert rc.retry.max_retries == rr["retry"]["max_retries"]
            assert rc.retry.retry_on_status_codes == rr["retry"]["retry_on_status_codes"]
        if "backends" in rr:
            assert [b.weight for b in rc.backend_list] == [b.get("weight", 1) for b in rr["backends"]]


def test_kairos_rs_transformation_blocks_are_kept():
    folder = shared_compat_dir()
    if folder is None:
        pytest.skip("../shared/compat is not present next to this checkout")
    config = load_config(folder / "kairos-rs-config-transform.json", use_env=False)
    raw = json.loads((folder / "kairos-rs-config-transform.json").read_text())["routers"][0]
    req, resp = config.routers[0].request_transformation, config.routers[0].response_transformation
    assert req.model_dump(exclude_defaults=True, by_alias=True) == raw["request_transformation"]
    assert resp.status_code_mappings[0].from_ == 404 and resp.status_code_mappings[0].to == 200
    assert [h.name for h in resp.headers] == ["X-Powered-By", "Server"]
    assert config.routers[1].protocol == "websocket"


def test_legacy_host_port_is_one_backend():
    config = parse_config({"routers": [route()]}, use_env=False)
    (backend,) = config.routers[0].backend_list
    assert backend.address == "http://127.0.0.1:3001"


def test_underscore_keys_are_comments_everywhere():
    config = parse_config(
        {"_comment": "top", "server": {"_why": "x"}, "routers": [route(_comment="legacy form")]},
        use_env=False,
    )
    assert len(config.routers) == 1
    assert "unknown key '_x'" not in " ".join(problems_of({"_x": 1, "routers": [route(port=0)]}))


def test_defaults():
    config = parse_config({"routers": [route()]}, use_env=False)
    assert config.server.port == 5900 and config.server.host == "0.0.0.0"
    assert config.timeout_ms == 30000 and config.connect_timeout_ms == 5000
    assert config.max_body_size == 10 * 1024 * 1024
    assert config.circuit_breaker.failure_threshold == 5
    r = config.routers[0]
    assert config.policy(r, "timeout_ms") == 30000


def test_route_policy_overrides_the_top_level_default():
    config = parse_config({"timeout_ms": 1000, "routers": [route(timeout_ms=50), route(external_path="/b", internal_path="/b")]}, use_env=False)
    assert config.policy(config.routers[0], "timeout_ms") == 50
    assert config.policy(config.routers[1], "timeout_ms") == 1000


# --- every problem, with its path ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, expected",
    [
        (route(external_path="api/users"), "routers[0].external_path: pattern 'api/users' does not start with '/'"),
        (route(external_path="/a/../b", internal_path="/b"), "routers[0].external_path: pattern '/a/../b' contains a '..' segment"),
        (route(external_path="/a/{id", internal_path="/b"), "routers[0].external_path: placeholder '{id' is not closed"),
        (route(external_path="/a/{}", internal_path="/b"), "routers[0].external_path"),
        (route(external_path="/a/{a b}", internal_path="/b"), "routers[0].external_path"),
        (route(internal_path="/users/{user}"), "routers[0].internal_path: internal_path uses {user}"),
        (route(methods=["FETCH"]), "routers[0].methods: unknown method 'FETCH'"),
        (route(load_balancing_strategy="fastest"), "routers[0].load_balancing_strategy: unknown strategy 'fastest'"),
        (route(port=70000), "routers[0].port: must be 1-65535"),
        (route(port=0), "routers[0].port: must be 1-65535"),
        (route(protocol="ftp"), "routers[0].protocol: protocol 'ftp' is not supported"),
        (route(protocol="dns"), "routers[0].protocol: protocol 'dns' is not supported"),
        (route(host=None, port=None, backends=[{"host": "http://a", "port": 1, "weight": 0}]), "routers[0].backends[0].weight: must be greater than 0"),
        (route(host=None, port=None, backends=[{"host": "http://a", "port": 99999}]), "routers[0].backends[0].port: must be 1-65535"),
        (route(host="10.0.0.5"), "routers[0].host: '10.0.0.5' has no scheme"),
        (route(backends=[{"host": "http://a", "port": 1}]), "routers[0]: give either 'host'+'port' or 'backends', not both"),
        (route(host=None, port=None), "routers[0]: needs 'backends'"),
        (route(external_path="/health", internal_path="/h"), "routers[0].external_path: '/health' is one of the gateway's own endpoints"),
        (route(retyr={}), "routers[0].retyr: unknown key 'retyr' (did you mean 'retry'?)"),
    ],
)
def test_route_problems_are_named_with_their_path(bad, expected):
    assert one_problem({"routers": [bad]}).startswith(expected)


def test_unknown_top_level_key_suggests_the_nearest():
    assert one_problem({"routers": [route()], "tiemout_ms": 5}) == "tiemout_ms: unknown key 'tiemout_ms' (did you mean 'timeout_ms'?)"


def test_auth_required_without_jwt_block():
    assert one_problem({"routers": [route(auth_required=True)]}).startswith(
        "routers[0].auth_required: true, but there is no top-level 'jwt' block"
    )


def test_short_jwt_secret():
    assert one_problem({"jwt": {"secret": "short"}, "routers": [route()]}).startswith("jwt.secret: must be at least 32 characters")


def test_jwt_secret_never_echoed_in_problems():
    secret = "s3cr3t-but-too-short"
    problems = problems_of({"jwt": {"secret": secret}, "routers": [route()]})
    assert secret not in "\n".join(problems)


def test_duplicate_and_conflicting_routes():
    problems = problems_of(
        {
            "routers": [
                route(),
                route(external_path="/api/users/{name}", internal_path="/u"),
                route(external_path="/api/users/{id}", methods=["POST", "GET"]),
            ]
        }
    )
    assert problems == [
        "routers[1]: GET /api/users/{name} conflicts with routers[0] '/api/users/{id}' (same path shape)",
        "routers[2]: GET /api/users/{id} duplicates routers[0]",
    ]


def test_same_shape_with_different_methods_is_fine():
    parse_config({"routers": [route(), route(methods=["POST"], external_path="/api/users/{uid}", internal_path="/u/{uid}")]}, use_env=False)


def test_every_problem_at_once():
    problems = problems_of(
        {
            "tiemout_ms": 1,
            "routers": [
                route(port=0),
                route(external_path="/x/{id", internal_path="/x"),
                route(external_path="/api/users/{name}", internal_path="/u", methods=["GET", "BREW"]),
            ],
        }
    )
    joined = "\n".join(problems)
    for fragment in ("routers[0].port", "routers[1].external_path", "routers[2].methods", "tiemout_ms"):
        assert fragment in joined
    assert len(problems) >= 4


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.json", use_env=False)
    assert info.value.problems == [f"config file not found: {tmp_path / 'nope.json'}"]


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "routers": [\n    {"external_path": }\n  ]\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path, use_env=False)
    assert info.value.problems == ["invalid JSON at line 3, column 23: Expecting value"]


def test_top_level_must_be_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    with pytest.raises(ConfigError) as info:
        load_config(path, use_env=False)
    assert info.value.problems == ["the top level must be a JSON object"]


# --- environment overrides ----------------------------------------------------------------------


def test_environment_wins_over_the_file(monkeypatch):
    monkeypatch.setenv("KAIROS_PORT", "6001")
    monkeypatch.setenv("KAIROS_HOST", "127.0.0.2")
    monkeypatch.setenv("KAIROS_TIMEOUT_MS", "1234")
    monkeypatch.setenv("KAIROS_LOGGING__LEVEL", "DEBUG")
    config = parse_config({"server": {"port": 7000, "host": "0.0.0.0"}, "timeout_ms": 5, "routers": [route()]})
    assert config.server.port == 6001
    assert config.server.host == "127.0.0.2"
    assert config.timeout_ms == 1234
    assert config.logging.level == "debug"


def test_nested_environment_override(monkeypatch):
    monkeypatch.setenv("KAIROS_SERVER__SHUTDOWN_DELAY_S", "2.5")
    monkeypatch.setenv("KAIROS_RATE_LIMIT__REQUESTS_PER_WINDOW", "7")
    config = parse_config({"rate_limit": {"strategy": "PerIP"}, "routers": [route()]})
    assert config.server.shutdown_delay_s == 2.5
    assert config.rate_limit.requests_per_window == 7


def test_bad_environment_value_is_a_named_problem(monkeypatch):
    monkeypatch.setenv("KAIROS_SERVER__PORT", "99999")
    with pytest.raises(ConfigError) as info:
        parse_config({"routers": [route()]})
    assert info.value.problems == ["server.port: must be 1-65535"]


def test_documented_schema_is_current():
    from pathlib import Path

    from kairos.config import GatewayConfig

    documented = json.loads((Path(__file__).resolve().parents[2] / "docs" / "config.schema.json").read_text())
    assert documented == GatewayConfig.model_json_schema(), "regenerate with: kairos schema > docs/config.schema.json"
