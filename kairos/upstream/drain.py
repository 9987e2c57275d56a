"""Drained backends, kept in a small file next to the config: `.<config file name>.drained.json`.

Drain is maintenance state: it must reach every worker of `kairos serve --workers N`
(each reads the file on SIGHUP and when it starts) and it should survive a restart
in the middle of a maintenance window. The file holds a sorted JSON list of
backend addresses; a missing or unreadable file means nothing is drained.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from kairos.files import write_atomically


def drain_file(config_path: str) -> Path:
    p = Path(config_path)
    return p.parent / f".{p.name}.drained.json"


def read_drained(config_path: str | None) -> set[str]:
    if not config_path:
        return set()
    try:
        data = orjson.loads(drain_file(config_path).read_bytes())
    except (OSError, ValueError):
        return set()
    return {str(a) for a in data} if isinstance(data, list) else set()


def write_drained(config_path: str, addresses: Iterable[str]) -> None:
    write_atomically(drain_file(config_path), orjson.dumps(sorted(set(addresses))))


def apply_drained(backends: Any, drained: set[str]) -> None:
    """Set each Backend's `drained` flag from the set (backends: address -> Backend)."""
    for address, backend in backends.items():
        flag = address in drained
        if backend.drained != flag:
            backend.drained = flag
            backend.update_available()
