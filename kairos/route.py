"""A compiled route: one router entry with everything the request path needs precomputed."""

from __future__ import annotations

from typing import Any

from kairos.config.models import GatewayConfig, RouterConfig
from kairos.routing import PathTemplate, Pattern, parse_pattern
from kairos.types import ASGIApp
from kairos.upstream.cluster import Cluster
from kairos.upstream.retry import RetryPolicy


def claim_header_names(config: GatewayConfig) -> frozenset[bytes]:
    """Request header names that only the gateway may set (forward_claims targets)."""
    if config.jwt is None:
        return frozenset()
    return frozenset(name.lower().encode("latin-1") for name in config.jwt.forward_claims.values())


class CompiledRoute:
    """One router entry, with everything the request path needs precomputed."""

    __slots__ = (
        "index",
        "config",
        "root",
        "pattern",
        "name",
        "template",
        "cluster",
        "timeout_s",
        "connect_timeout_s",
        "read_timeout_s",
        "preserve_host",
        "strip_headers",
        "pipeline",
        "extras",
        "retry",
        "panic_mode",
    )

    def __init__(self, index: int, config: RouterConfig, root: GatewayConfig, cluster: Cluster) -> None:
        self.index = index
        self.config = config  # the route's own block
        self.root = root  # the whole config (top-level defaults; `policy()` reads both)
        self.pattern: Pattern = parse_pattern(config.external_path)
        # The route's name in metrics and logs: its template, never the raw path.
        self.name = config.external_path
        self.template = PathTemplate(config.internal_path, self.pattern.param_names)
        self.cluster = cluster
        self.timeout_s = root.policy(config, "timeout_ms") / 1000
        self.connect_timeout_s = root.policy(config, "connect_timeout_ms") / 1000
        self.read_timeout_s: float | None = (root.policy(config, "read_timeout_ms") / 1000) or None
        self.preserve_host = config.preserve_host
        # Request headers removed before forwarding (policy layers add to this at build time).
        # forward_claims header names are set only by the gateway: a client's copy (and one
        # spelled with '_' for '-') is dropped on every route; auth's own values travel in
        # scope["kairos.gateway_headers"] and are added after hop-by-hop processing.
        self.strip_headers: frozenset[bytes] = claim_header_names(root)
        # None: exactly one upstream attempt (kairos-rs behaviour without a `retry` block).
        self.retry = RetryPolicy(config.retry, self.name) if config.retry is not None else None
        self.panic_mode = config.panic_mode
        # The route's layer chain (kairos/layers.py), built by runtime.compile_runtime.
        self.pipeline: ASGIApp | None = None
        # Per-feature compiled state (breakers, limiters, ...), keyed by feature name.
        self.extras: dict[str, Any] = {}

    def policy(self, key: str) -> Any:
        """The route's effective value of a policy key: its own, else the top-level default."""
        return self.root.policy(self.config, key)

    def __repr__(self) -> str:
        return f"CompiledRoute({self.config.methods} {self.name})"

