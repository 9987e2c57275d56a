"""Which route a request would take: `POST /admin/match` and `kairos match CONFIG METHOD URL`.

Uses the gateway's own router (the same trie the proxy matches with), built from a
config without starting anything, so the answer offline and online is the same.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from kairos.admin.document import router_id
from kairos.config.models import GatewayConfig, RouterConfig
from kairos.routing import MethodNotAllowed, PathTemplate, Router, UnsafePath, parse_pattern


def policies(config: GatewayConfig, rc: RouterConfig) -> dict[str, Any]:
    """The effective policies of a route (top-level defaults, the route's overrides)."""
    rate = config.policy(rc, "rate_limit")
    breaker = config.policy(rc, "circuit_breaker")
    cors = config.policy(rc, "cors")
    return {
        "auth": "jwt" if rc.auth_required else None,
        "rate_limit": None if rate is None else {
            "requests_per_window": rate.requests_per_window, "window_duration": rate.window_duration,
            "strategy": rate.strategy if isinstance(rate.strategy, str) else "PerHeader",
        },
        "timeout_ms": config.policy(rc, "timeout_ms"),
        "max_body_size": config.policy(rc, "max_body_size"),
        "retry": None if rc.retry is None else {"max_retries": rc.retry.max_retries},
        "circuit_breaker": breaker.enabled,
        "cors": cors is not None,
        "ip_allow": config.policy(rc, "ip_allow"),
        "ip_deny": config.policy(rc, "ip_deny"),
        "load_balancing_strategy": rc.load_balancing_strategy,
        "outlier_detection": rc.outlier_detection is not None,
        "health_check": rc.health_check is not None or any(b.health_check_path for b in rc.backend_list),
    }


def match_request(config: GatewayConfig, method: str, url: str) -> dict[str, Any]:
    """{"matched": bool, "status": would-be status when not matched, "route": {...}, ...}."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    path = quote(path, safe="/:@!$&'()*+,;=-._~%")
    method = method.upper()
    router = Router((parse_pattern(r.external_path), r.methods, i) for i, r in enumerate(config.routers))
    try:
        found = router.match(method, path)
    except UnsafePath as exc:
        return {"matched": False, "status": 400, "reason": str(exc)}
    if found is None:
        return {"matched": False, "status": 404, "reason": f"no route for {method} {path}"}
    if isinstance(found, MethodNotAllowed):
        return {"matched": False, "status": 405, "reason": f"method {method} is not allowed", "allow": list(found.allow)}
    index = found.target
    assert isinstance(index, int)
    rc = config.routers[index]
    template = PathTemplate(rc.internal_path, parse_pattern(rc.external_path).param_names)
    upstream_path = template.render(found.params)
    if parts.query:
        upstream_path += "?" + parts.query
    return {
        "matched": True,
        "status": None,
        "route": {"id": router_id(rc), "index": index, "name": rc.name,
                  "external_path": rc.external_path, "methods": rc.methods},
        "params": found.params,
        "upstream_path": upstream_path,
        "backends": [{"address": b.address, "weight": b.weight} for b in rc.backend_list],
        "policies": policies(config, rc),
    }
