"""A compiled route: one router entry with everything the request path needs precomputed."""

from __future__ import annotations

from typing import Any

from kairos.config.models import GatewayConfig, RouterConfig
from kairos.middleware.auth import claim_header_names
from kairos.routing import PathTemplate, Pattern, parse_pattern
from kairos.types import ASGIApp
from kairos.upstream.cluster import Cluster
from kairos.upstream.retry import RetryPolicy


class CompiledRoute:
    """One router entry, with everything the request path needs precomputed."""

    __slots__ = (
        "index",
        "config",
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
        self.config = config
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
        # forward_claims header names are set only by the gateway: a client's copy is dropped
        # on every route (on a protected route, auth removes them before setting its own).
        self.strip_headers: frozenset[bytes] = frozenset() if config.auth_required else claim_header_names(root)
        # None: exactly one upstream attempt (kairos-rs behaviour without a `retry` block).
        self.retry = RetryPolicy(config.retry, self.name) if config.retry is not None else None
        self.panic_mode = config.panic_mode
        self.pipeline: ASGIApp | None = None
        # Per-feature compiled state (breakers, limiters, ...), keyed by feature name.
        self.extras: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"CompiledRoute({self.config.methods} {self.name})"

