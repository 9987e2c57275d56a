"""Each route's own ASGI chain, built once when the config is compiled.

Order (outermost first): ip_rules -> cors -> body_limit -> auth -> ratelimit -> Forwarder.
A layer a route does not configure is simply not in its chain, so it costs
nothing; a per-route override is a different instance of the same layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncio
import time

from kairos.config.models import GatewayConfig
from kairos.errors import GatewayError
from kairos.observability.metrics import count_upstream_error
from kairos.middleware.auth import auth_layer
from kairos.middleware.ip_rules import ip_rules_layer
from kairos.middleware.ratelimit import ratelimit_layer
from kairos.proxy.exchange import (
    ClientDisconnected,
    open_exchange,
    relay_response,
    request_body,
    has_body,
    upstream_failure,
    upstream_headers,
)
from kairos.types import ASGIApp, Receive, Scope, Send
from kairos.upstream.breaker import OPEN, retry_after_header
from kairos.upstream.client import UpstreamError
from kairos.upstream.retry import MIN_ATTEMPT_S, StreamedBody, buffer_body

if TYPE_CHECKING:
    from kairos.app import Gateway
    from kairos.runtime import CompiledRoute
    from kairos.upstream.cluster import Backend


class Forwarder:
    """The end of every route's chain: pick a backend, forward, stream the answer back.

    Per attempt: the balancer picks among available backends (healthy, not
    ejected, breaker letting through), the backend's in-flight count spans the
    whole exchange (response streaming included), and the outcome feeds the
    backend's breaker and the route's outlier detector. A route without a
    `retry` block makes exactly one attempt; with one, `_with_retries` runs the
    loop (backoff, budget, overall deadline, a different backend per retry).
    """

    __slots__ = ("route", "gateway", "balancer", "backends", "breakers", "outlier")

    def __init__(self, route: CompiledRoute, gateway: Gateway) -> None:
        self.route = route
        self.gateway = gateway
        cluster = route.cluster
        self.balancer = cluster.balancer
        self.backends = cluster.backends
        self.breakers = cluster.breakers
        self.outlier = cluster.outlier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        if route.retry is not None:
            await self._with_retries(scope, receive, send)
            return
        i = self.balancer.pick_index(scope)
        if i < 0:
            raise self.unavailable()
        backend = self.backends[i]
        breaker = self.breakers[i]
        path = self.target(scope)
        headers = upstream_headers(scope, backend, route.preserve_host, route.strip_headers)
        body = request_body(receive) if has_body(scope) else None
        scope["kairos.backend"] = backend.address
        gen = breaker.acquire()
        backend.in_flight += 1
        try:
            try:
                response = await open_exchange(
                    self.gateway.upstream, scope, backend, path, headers, body, route.timeout_s, route.connect_timeout_s
                )
            except UpstreamError as exc:
                self.failed(backend, breaker, gen, exc)
                raise upstream_failure(exc, backend, scope) from None
            except BaseException:
                breaker.release(gen)
                raise
            self.answered(backend, breaker, gen, response.status)
            response.read_timeout = route.read_timeout_s
            await relay_response(scope, send, response, receive if body is None else None)
        finally:
            backend.in_flight -= 1

    def target(self, scope: Scope) -> str:
        """The upstream request target: internal_path with the raw params, the query unchanged."""
        path = self.route.template.render(scope["kairos.params"])
        qs = scope.get("query_string")
        return path + "?" + qs.decode("latin-1") if qs else path

    # ------------------------------------------------------------------ outcomes
    def failed(self, backend: Backend, breaker, gen: int, exc: UpstreamError) -> None:
        if exc.kind == "request_body":  # the client's body broke: not the backend's fault
            breaker.release(gen)
            return
        count_upstream_error(backend.address, exc.kind)
        breaker.failure(gen)
        if self.outlier is not None:
            self.outlier.failure(backend)

    def answered(self, backend: Backend, breaker, gen: int, status: int) -> None:
        breaker.record_status(gen, status)
        if status >= 500:
            count_upstream_error(backend.address, "status")
            if self.outlier is not None:
                self.outlier.failure(backend)
        elif self.outlier is not None:
            self.outlier.success(backend)

    def unavailable(self) -> GatewayError:
        """Why nothing could be picked: breakers of otherwise usable backends (503
        circuit_open, with Retry-After), or no healthy backend at all."""
        route = self.route
        waits = []
        for backend, breaker in zip(self.backends, self.breakers):
            if backend.available or route.panic_mode:
                waits.append(breaker.retry_after_s() if breaker.state == OPEN else 1.0)
        if waits:
            return GatewayError(
                "circuit_open",
                f"circuit breaker open for every backend of route {route.name}",
                [retry_after_header(min(waits))],
            )
        return GatewayError("no_healthy_backend", f"no healthy backend for route {route.name}")

    # ------------------------------------------------------------------ retries
    async def _with_retries(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        policy = route.retry
        assert policy is not None
        budget = policy.budget
        method = scope["method"]
        deadline = time.monotonic() + route.timeout_s
        path = self.target(scope)
        body: bytes | StreamedBody | None = None
        if has_body(scope):
            try:
                body = await buffer_body(receive, policy.buffer_bytes)
            except ClientDisconnected:
                return  # the client went away before its body was in: nobody to answer
        idempotent = policy.may_retry_method(method)
        budget.requests += 1
        holding_retry = False
        attempt = 0
        exclude = -1
        try:
            while True:
                i = self.balancer.pick_index(scope, exclude)
                if i < 0:
                    raise self.unavailable()
                backend = self.backends[i]
                breaker = self.breakers[i]
                headers = upstream_headers(scope, backend, route.preserve_host, route.strip_headers)
                scope["kairos.backend"] = backend.address
                remaining = deadline - time.monotonic()
                timeout = remaining if policy.per_try_s is None else min(policy.per_try_s, remaining)
                gen = breaker.acquire()
                backend.in_flight += 1
                try:
                    response = await open_exchange(
                        self.gateway.upstream, scope, backend, path, headers, body, timeout, route.connect_timeout_s
                    )
                except UpstreamError as exc:
                    backend.in_flight -= 1
                    self.failed(backend, breaker, gen, exc)
                    if holding_retry:
                        budget.release()
                        holding_retry = False
                    if exc.kind == "request_body" or not policy.on_connection_error or attempt >= policy.max_retries:
                        raise upstream_failure(exc, backend, scope) from None
                    if not (exc.never_sent or idempotent):
                        raise upstream_failure(exc, backend, scope) from None
                    if isinstance(body, StreamedBody) and body.started:
                        raise upstream_failure(exc, backend, scope) from None
                    delay = policy.delay(attempt)
                    if time.monotonic() + delay + MIN_ATTEMPT_S >= deadline or not budget.try_acquire():
                        raise upstream_failure(exc, backend, scope) from None
                    holding_retry = True
                    policy.counters[exc.kind].inc()
                except BaseException:
                    backend.in_flight -= 1
                    breaker.release(gen)
                    raise
                else:
                    if holding_retry:
                        budget.release()
                        holding_retry = False
                    status = response.status
                    self.answered(backend, breaker, gen, status)
                    delay = -1.0
                    if (
                        status in policy.statuses
                        and attempt < policy.max_retries
                        and idempotent
                        and not isinstance(body, StreamedBody)
                    ):
                        delay = policy.delay(attempt)
                        if time.monotonic() + delay + MIN_ATTEMPT_S >= deadline or not budget.try_acquire():
                            delay = -1.0
                    if delay < 0:
                        try:
                            whole = receive if not isinstance(body, StreamedBody) else None
                            response.read_timeout = route.read_timeout_s
                            await relay_response(scope, send, response, whole)
                        finally:
                            backend.in_flight -= 1
                        return
                    response.release()
                    backend.in_flight -= 1
                    holding_retry = True
                    policy.counters["status"].inc()
                attempt += 1
                exclude = i
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            budget.requests -= 1
            if holding_retry:
                budget.release()


def build_pipeline(route: CompiledRoute, config: GatewayConfig, gateway: Gateway) -> ASGIApp:
    from kairos.middleware.body_limit import body_limit_layer
    from kairos.middleware.cors import cors_layer
    from kairos.middleware.security_headers import compile_for_route

    # Security headers are applied by the global layer from this compiled set (docs/architecture.md).
    compile_for_route(route, config)
    app: ASGIApp = Forwarder(route, gateway)
    app = ratelimit_layer(route, config, gateway, app)
    app = auth_layer(route, config, gateway, app)
    app = body_limit_layer(app, route, config)
    app = cors_layer(app, route, config)
    app = ip_rules_layer(route, config, gateway, app)
    return app
