"""A config file is input too: pathological files give a problem list, never a traceback or a hang.

At the doors a config comes through, in process: the loader (`kairos validate` and
`kairos serve` read through it: tests/integration/test_config_hostile_cli.py), environment
overrides, create_app() and hot reload.
"""

from __future__ import annotations

import json
import os

import pytest

from kairos.config import ConfigError, load_config, parse_config
from kairos.config.loader import MAX_DEPTH

ROUTE = {"external_path": "/a", "internal_path": "/a", "methods": ["GET"],
         "backends": [{"host": "http://127.0.0.1", "port": 3001}]}
GOOD = json.dumps({"routers": [ROUTE]})

# name -> (file text, a fragment of the expected problem)
HOSTILE = {
    # json's C parser gives up at the recursion limit ("nested too deeply to read"); under a
    # raised limit it reads it and the depth check answers ("nested more than 32 levels")
    "nested_100000_levels": ('{"x":' + "[" * 100_000 + "]" * 100_000 + "}", "nested "),
    "nested_900_levels": ('{"routers":' + "[" * 900 + "]" * 900 + "}", f"nested more than {MAX_DEPTH} levels deep"),
    "integer_5000_digits": (GOOD.replace("3001", "9" * 5000), "routers[0].backends[0].port: an integer with 5000 digits"),
    "negative_integer_5000_digits": ('{"max_body_size": -' + "1" * 5000 + "}", "max_body_size: an integer with 5000 digits"),
    "nan": ('{"server": {"shutdown_delay_s": NaN}}', "server.shutdown_delay_s: nan is not a finite number"),
    "infinity": ('{"max_body_size": -Infinity}', "max_body_size: -inf is not a finite number"),
    "float_overflow": ('{"server": {"port": 1e999}}', "server.port: inf is not a finite number"),
    "duplicate_key": ('{"routers": [], "routers": []}', "top level: key 'routers' is given more than once"),
    "duplicate_nested_key": ('{"server": {"port": 1, "port": 2}}', "server: key 'port' is given more than once"),
    "route_with_30000_placeholders": (
        json.dumps({"routers": [dict(ROUTE, external_path="/" + "/".join(f"{{p{i}}}" for i in range(30_000)))]}),
        "routers[0].external_path: pattern",
    ),
    "nul_byte": ('{"routers": []}\x00', "invalid JSON at line 1, column 16"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_a_problem_list(tmp_path, name):
    text, expected = HOSTILE[name]
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, use_env=False)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert len(load_config(path, use_env=False).routers) == 1


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    path = tmp_path / "config.json"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path, use_env=False)


def test_an_oversized_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("kairos.config.loader.MAX_CONFIG_BYTES", 100)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_comment": "x" * 200, "routers": []}))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path, use_env=False)


def test_a_dict_with_pathological_values_is_a_problem_list():
    # create_app(dict) / parse_config: built in Python, not read from JSON
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    problems = []
    for data in ({"routers": deep}, {"server": {"shutdown_delay_s": float("nan")}}):
        with pytest.raises(ConfigError) as info:
            parse_config(data, use_env=False)
        problems += info.value.problems
    assert problems[0].endswith(f"nested more than {MAX_DEPTH} levels deep")
    assert problems[1] == "server.shutdown_delay_s: nan is not a finite number (NaN, Infinity, or too large)"


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("KAIROS_ROUTERS", "[" * 5000 + "]" * 5000, "KAIROS_* environment variable cannot be read"),
        ("KAIROS_SERVER", '{"shutdown_delay_s": NaN}', "server.shutdown_delay_s: nan is not a finite number"),
        ("KAIROS_SERVER__PORT", "9" * 5000, "server.port"),
        ("KAIROS_SERVER", '{"port": ' + "9" * 5000 + "}", "KAIROS_* environment variable cannot be read"),
    ],
)
def test_hostile_environment_overrides_are_a_problem_list(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        parse_config({"routers": []})
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_startup_and_hot_reload_answer_problems(tmp_path, caplog):
    from kairos.app import create_app

    path = tmp_path / "config.json"
    for name in ("nested_100000_levels", "integer_5000_digits"):
        path.write_text(HOSTILE[name][0])
        with pytest.raises(ConfigError):
            create_app(str(path))
    path.write_text(GOOD)
    gateway = create_app(str(path)).state.gateway
    for name, (text, expected) in HOSTILE.items():
        path.write_text(text)
        caplog.clear()
        assert gateway.reload("signal") is False, name
        failed = [r.fields for r in caplog.records if r.getMessage() == "config_reload_failed"]
        assert failed and any(expected in p for p in failed[0]["problems"]), (name, failed)
    assert len(gateway.runtime.routes) == 1  # the good config still serves
