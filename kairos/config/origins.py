"""Origin allow-list syntax, shared by the `cors` and `websocket` blocks."""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

ORIGIN = re.compile(r"^[a-z][a-z0-9+.\-]*://(\*\.)?[A-Za-z0-9\-.\[\]:]+?(:(\d{1,5}|\*))?$")


def check_origins(value: list[str]) -> list[str]:
    """Each entry is '*', 'null', or scheme://host[:port] with '*' as a whole subdomain part or port."""
    for origin in value:
        if origin in ("*", "null"):
            continue
        if not ORIGIN.match(origin):
            raise PydanticCustomError(
                "kairos",
                f"'{origin}' is not an origin: write scheme://host[:port] without a path "
                "('*' as a whole subdomain part or port is allowed: https://*.example.com, http://localhost:*)",
            )
    return value
