"""Config builders shared by the tests/test_ops_*.py files."""

from __future__ import annotations

import time
from typing import Any


def route(up, external: str = "/api/{id}", internal: str = "/echo/{id}", methods=("GET", "POST"), **extra: Any) -> dict:
    return {"external_path": external, "internal_path": internal, "methods": list(methods),
            "backends": [up.backend()], **extra}


def config(*routes: dict, **top: Any) -> dict:
    return {"version": 1, "routers": list(routes), **top}


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got = {}
        for part in rest.rstrip("}").split('",'):
            if "=" in part:
                k, _, v = part.partition("=")
                got[k.strip(",")] = v.strip('"')
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    return total if found else 0.0


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.02)
