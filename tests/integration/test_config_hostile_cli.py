"""`kairos validate` answers a problem list for a hostile config file, never a traceback."""

from __future__ import annotations

import pytest

from tests.unit.test_config_hostile import HOSTILE


@pytest.mark.parametrize("name", ["nested_100000_levels", "integer_5000_digits", "route_with_30000_placeholders"])
def test_validate_answers_problems_not_a_traceback(kairos_cli, tmp_path, name):
    # `kairos serve` loads through the same _load_or_exit
    text, expected = HOSTILE[name]
    (tmp_path / f"{name}.json").write_text(text)
    result = kairos_cli("validate", tmp_path / f"{name}.json")
    assert result.returncode == 1, (name, result.stdout)
    assert expected in result.stderr, (name, result.stderr)
    assert "Traceback" not in result.stderr, (name, result.stderr)
