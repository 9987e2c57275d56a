"""Rate limiting, per route, after authentication (so PerUser sees the verified `sub`).

The effective `rate_limit` block is the route's own, else the top-level one.
A route that inherits the top-level block shares its counters with every other
route that does (PerIP means "per IP across the gateway"); a route with its own
block counts separately. Keys by strategy:

    PerIP              ip:<client ip>
    PerUser            user:<sub>          (ip:<client ip> when the request carries no verified user)
    PerRoute           route
    PerIPAndRoute      ip:<client ip> + route
    PerUserAndRoute    user:<sub> + route  (ip fallback as above)
    {"PerHeader": h}   hdr:<value of h>    (ip:<client ip> when the header is absent)

Every response of a limited route carries X-RateLimit-Limit/-Remaining/-Reset;
a refusal is 429 `rate_limit_exceeded` with Retry-After. When Redis does not
answer, `on_redis_error` decides (allow: serve without headers; deny: 503
`rate_limit_unavailable`), the failure is counted, logged at most once per
LOG_INTERVAL_S, and Redis is retried after a short pause, so it recovers by itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from kairos.config.models import PerHeader, RateLimitConfig
from kairos.edge import redis_url_for
from kairos.errors import GatewayError
from kairos.observability.logging import log_event
from kairos.observability.metrics import RATELIMIT_BACKEND_ERRORS, RATELIMITED
from kairos.ratelimit import (
    BackendUnavailable,
    Decision,
    MemoryWindow,
    RedisTokenBucket,
    RedisWindow,
)
from kairos.proxy.exchange import on_response_start
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

LOG_INTERVAL_S = 30.0
# After a Redis failure, requests skip Redis (and follow on_redis_error) this long
# before the next attempt: an outage must not add a timeout to every request.
REDIS_RETRY_AFTER_S = 0.5
MAX_KEY_PART = 200


class _RedisHealth:
    """Shared by the limiters of one Redis URL: failure pause and log throttling."""

    def __init__(self, safe_url: str) -> None:
        self.safe_url = safe_url
        self.down_until = 0.0
        self.last_log = float("-inf")
        self.failing = False

    def failed(self, error: str) -> None:
        now = time.monotonic()
        self.down_until = now + REDIS_RETRY_AFTER_S
        if now - self.last_log >= LOG_INTERVAL_S:  # once per interval, however many requests fail
            self.last_log = now
            log_event("ratelimit_backend_error", logging.WARNING, redis=self.safe_url, error=error[:300])
        self.failing = True

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            log_event("ratelimit_backend_recovered", redis=self.safe_url)


def _part(value: str) -> str:
    if len(value) > MAX_KEY_PART:
        return "h-" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return value


class RateLimit:
    def __init__(
        self,
        app: ASGIApp,
        route_name: str,
        rl: RateLimitConfig,
        limiter: Any,
        scope_name: str,
        health: _RedisHealth | None,
    ) -> None:
        self.app = app
        self.route_name = route_name
        self.limiter = limiter
        self.remote = health is not None
        self.health = health
        self.deny_on_error = rl.on_redis_error == "deny"
        strategy = rl.strategy
        self.header: bytes | None = None
        if isinstance(strategy, PerHeader):
            self.header = strategy.PerHeader.lower().encode("latin-1")
            strategy_name = "PerHeader"
        else:
            strategy_name = strategy
        self.by_user = strategy_name in ("PerUser", "PerUserAndRoute")
        self.by_ip = strategy_name in ("PerIP", "PerIPAndRoute")
        self.with_route = strategy_name in ("PerRoute", "PerIPAndRoute", "PerUserAndRoute")
        base = f"{scope_name}:{strategy_name}"
        if self.with_route:
            base += f":{route_name}"
        self.base = base + ":"
        self.limited = RATELIMITED.labels(route_name)
        self.limit_header = str(limiter.limit).encode()

    def key(self, scope: Scope) -> str:
        if self.by_ip:
            return self.base + "ip:" + scope.get("kairos.client_ip", "")
        if self.by_user:
            user = scope.get("kairos.user")
            sub = user.get("sub") if isinstance(user, dict) else None
            if sub is not None:
                return self.base + "user:" + _part(str(sub))
            return self.base + "ip:" + scope.get("kairos.client_ip", "")
        if self.header is not None:
            for name, value in scope["headers"]:
                if name == self.header:
                    return self.base + "hdr:" + _part(value.decode("latin-1"))
            return self.base + "ip:" + scope.get("kairos.client_ip", "")
        return self.base  # PerRoute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.key(scope)
        if not self.remote:
            decision: Decision = self.limiter.hit(key)
        else:
            health = self.health
            assert health is not None
            if health.down_until and time.monotonic() < health.down_until:
                decision = None  # type: ignore[assignment]
            else:
                try:
                    decision = await self.limiter.hit(key)
                    if health.failing:
                        health.recovered()
                    health.down_until = 0.0
                except BackendUnavailable as exc:
                    health.failed(str(exc))
                    decision = None  # type: ignore[assignment]
            if decision is None:
                RATELIMIT_BACKEND_ERRORS.inc()
                if self.deny_on_error:
                    raise GatewayError("rate_limit_unavailable", "rate limiting is unavailable, try again shortly",
                                       [(b"retry-after", b"1")])
                await self.app(scope, receive, send)
                return
        headers = [
            (b"x-ratelimit-limit", self.limit_header),
            (b"x-ratelimit-remaining", str(decision.remaining).encode()),
            (b"x-ratelimit-reset", str(decision.reset).encode()),
        ]
        if not decision.allowed:
            self.limited.inc()
            headers.append((b"retry-after", str(max(1, decision.reset)).encode()))
            raise GatewayError("rate_limit_exceeded", "rate limit exceeded, retry later", headers)

        def add_headers(scope: Scope, message: Message) -> None:
            message["headers"] = list(message.get("headers", ())) + headers

        await self.app(scope, receive, on_response_start(scope, send, add_headers))


def ratelimit_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    """RateLimit when a `rate_limit` block applies to the route."""
    rl: RateLimitConfig | None = route.policy("rate_limit")
    if rl is None:
        return None
    own = route.config.rate_limit is not None
    scope_name = f"route:{route.name}" if own else "global"
    capacity = rl.requests_per_window + rl.burst_allowance
    edge = deps.edge
    health = None
    if rl.enable_redis:
        backend = edge.redis_backend(redis_url_for(rl.redis_url))
        health = backend.health
        if health is None:  # one per pool: shared by every route using this Redis, kept across reloads
            health = backend.health = _RedisHealth(backend.safe_url)
        if rl.window_type == "TokenBucket":
            limiter: Any = RedisTokenBucket(
                backend, rl.redis_key_prefix, capacity, rl.requests_per_window,
                rl.requests_per_window / rl.window_duration,
            )
        else:
            limiter = RedisWindow(backend, rl.redis_key_prefix, rl.window_type, capacity, rl.window_duration)
    elif rl.window_type == "TokenBucket":
        ident = (scope_name, capacity, rl.requests_per_window, rl.window_duration)
        limiter = edge.token_bucket(ident, capacity, rl.requests_per_window, rl.requests_per_window / rl.window_duration)
    else:
        limiter = MemoryWindow(edge.memory, rl.window_type, capacity, rl.window_duration)
    return partial(RateLimit, route_name=route.name, rl=rl, limiter=limiter, scope_name=scope_name, health=health)
