"""The config as a JSON document: route ids, redaction, ETags and change summaries.

Route id: the router's `name` when it has one; otherwise `r-` and the first 10 hex
digits of SHA-256 over `"<METHODS sorted, comma-joined> <external_path>"`
(e.g. `GET,POST /api/users/{id}`), so it survives reordering and edits of anything
but the methods and the path.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from kairos.observability.logging import redact

REDACTED = "***"
# Keys whose values are secrets wherever they appear (JWT secret, admin token hashes,
# header values a transform marks as secret, passwords and API keys in any block).
_SECRET_KEY = re.compile(r"(secret|password|passwd|token_sha256|api[_-]?key|private_key|credential)", re.I)


def route_id(router: dict[str, Any]) -> str:
    name = router.get("name")
    if isinstance(name, str) and name:
        return name
    methods = router.get("methods") or []
    methods = sorted({str(m).upper() for m in methods}) if isinstance(methods, list) else []
    key = f"{','.join(methods)} {router.get('external_path', '')}"
    return "r-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def router_id(rc: Any) -> str:
    """route_id of a parsed RouterConfig: its three fields, not a dump of the whole model (the
    stats stream asks for every route's id every second)."""
    return route_id({"name": rc.name, "methods": rc.methods, "external_path": rc.external_path})


def etag_of(raw: bytes) -> str:
    return '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'


def dumps(document: dict[str, Any]) -> bytes:
    """How the admin API writes a config file: indented JSON, a final newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


# Header edits ({"name", "value"}, e.g. request_transformation.headers) whose header carries a credential.
_SECRET_HEADER = re.compile(r"(authorization|cookie|token|secret|api[_-]?key|password|signature)", re.I)


def _secret_header(item: dict[str, Any]) -> bool:
    name = item.get("name")
    return isinstance(name, str) and "value" in item and bool(_SECRET_HEADER.search(name))


def _secret_value(key: str, value: Any, parent_key: str) -> bool:
    if not _SECRET_KEY.search(key):
        return False
    return not isinstance(value, (dict, list, bool)) and value is not None


def redacted(value: Any, key: str = "") -> Any:
    """A copy with every secret replaced by "***" and URL passwords masked."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if _secret_value(str(k), v, key):
                out[k] = REDACTED
            elif isinstance(v, dict) and (v.get("secret") is True or _secret_header(v)) and isinstance(v.get("value"), str):
                out[k] = {**redacted(v, str(k)), "value": REDACTED}  # a credential header's value
            else:
                out[k] = redacted(v, str(k))
        return out
    if isinstance(value, list):
        return [{**redacted(v, key), "value": REDACTED}
                if isinstance(v, dict) and _secret_header(v) and isinstance(v.get("value"), str) else redacted(v, key)
                for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def restore_secrets(new: Any, current: Any) -> Any:
    """Put the current secrets back where `new` carries their redacted form (a GET edited and PUT back).

    Routers are paired by route id, everything else by key or index."""
    if isinstance(new, dict):
        cur = current if isinstance(current, dict) else {}
        out = {}
        for k, v in new.items():
            if k == "routers" and isinstance(v, list) and isinstance(cur.get(k), list):
                by_id = {route_id(r): r for r in cur[k] if isinstance(r, dict)}
                out[k] = [restore_secrets(r, by_id.get(route_id(r)) if isinstance(r, dict) else None) for r in v]
            else:
                out[k] = restore_secrets(v, cur.get(k))
        return out
    if isinstance(new, list):
        cur_list = current if isinstance(current, list) else []
        by_name = {c.get("name"): c for c in cur_list if isinstance(c, dict) and isinstance(c.get("name"), str)}
        out_list = []
        for i, v in enumerate(new):
            # Named entries (header edits) pair by name, so reordering them keeps each secret with its header.
            if isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] in by_name:
                out_list.append(restore_secrets(v, by_name[v["name"]]))
            else:
                out_list.append(restore_secrets(v, cur_list[i] if i < len(cur_list) else None))
        return out_list
    if isinstance(new, str) and "***" in new and isinstance(current, str):
        if new == REDACTED or new == redact(current):
            return current
    return new


def summarize(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What changed, for the `audit` log and the history: routes by id, top-level keys by name.

    Values are never included (they may be secrets)."""
    old_routes = {route_id(r): r for r in old.get("routers", []) if isinstance(r, dict)}
    new_routes = {route_id(r): r for r in new.get("routers", []) if isinstance(r, dict)}
    keys = sorted(k for k in set(old) | set(new) if k != "routers" and old.get(k) != new.get(k))
    return {
        "routes_added": sorted(set(new_routes) - set(old_routes)),
        "routes_removed": sorted(set(old_routes) - set(new_routes)),
        "routes_changed": sorted(i for i in set(old_routes) & set(new_routes) if old_routes[i] != new_routes[i]),
        "settings_changed": keys,
    }


def find_route(document: dict[str, Any], rid: str) -> int | None:
    for i, r in enumerate(document.get("routers", [])):
        if isinstance(r, dict) and route_id(r) == rid:
            return i
    return None
