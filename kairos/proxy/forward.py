"""Forward one request to one backend and stream the answer back.

Bodies stream both ways with bounded memory: the request body is handed to the
upstream client as an async iterator over ASGI `http.request` messages, the
response is relayed chunk by chunk as it arrives (SSE and chunked responses
reach the client as they are produced, not at the end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from kairos.errors import GatewayError
from kairos.observability import metrics
from kairos.observability.logging import log_event
from kairos.observability.metrics import count_upstream_error
from kairos.proxy.body import ClientDisconnected, StreamedBody, buffer_body, request_body
from kairos.proxy.exchange import request_has_body, response_headers, upstream_headers
from kairos.types import Receive, Scope, Send
from kairos.upstream.backend import Backend
from kairos.upstream.breaker import OPEN, retry_after_header
from kairos.upstream.client import PoolLimits, Response, UpstreamClient, UpstreamError, UpstreamTimeout
from kairos.upstream.pool import pool_limits
from kairos.upstream.retry import MIN_ATTEMPT_S

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute
    from kairos.upstream.breaker import CircuitBreaker, NoBreaker


async def open_exchange(
    client: UpstreamClient,
    scope: Scope,
    backend: Backend,
    path_and_query: str,
    headers: list[tuple[bytes, bytes]],
    body: AsyncIterator[bytes] | bytes | None,
    timeout_s: float,
    connect_timeout_s: float | None,
    limits: PoolLimits | None = None,
) -> Response:
    """Send the request and wait for the response headers, within `timeout_s` overall.

    The caller (the Forwarder) counts the backend's in-flight requests, across the
    whole exchange including the streamed response, and its errors per attempt."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await client.request(
                backend.scheme, backend.connect_host, backend.port, scope["method"], path_and_query,
                headers, body, connect_timeout_s, limits,
            )
    except TimeoutError:
        raise UpstreamTimeout(f"no response from {backend.address} within {timeout_s * 1000:.0f} ms") from None
    metrics.observe_upstream(backend.address, time.perf_counter() - start)
    return response


# A response with no length, or this long, is relayed with an eye on the client: if it
# goes away, uvicorn's send() returns silently and an SSE stream would be read forever.
_WATCH_ABOVE = 1024 * 1024


def _streams(raw: list[tuple[bytes, bytes]]) -> bool:
    for name, value in raw:
        if name.lower() == b"content-length":
            try:
                return int(value) > _WATCH_ABOVE
            except ValueError:
                return True
    return True


async def _abort_on_disconnect(receive: Receive, response: Response) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    response.abort()


async def relay_response(scope: Scope, send: Send, response: Response, receive: Receive | None = None) -> None:
    """Stream the upstream's response to the client (the access log counts the bytes).

    `receive` is given when the request body has been read completely: then a long or
    endless response stops (and its upstream connection closes) when the client leaves.
    """
    sent = 0
    watcher: asyncio.Task[None] | None = None
    try:
        status = response.status  # 100-599: the upstream connection refuses any other (connection.py)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": response_headers(response.raw_headers),
            }
        )
        if scope["method"] == "HEAD" or status in (204, 304):
            await send({"type": "http.response.body", "body": b""})
            return
        if receive is not None and _streams(response.raw_headers):
            watcher = asyncio.ensure_future(_abort_on_disconnect(receive, response))
        read = response.read
        try:
            while chunk := await read():
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            # Too late for an error response: the client's connection is aborted (raising is
            # the only honest way; ending the body cleanly would pass a truncation off as whole).
            log_event(
                "upstream_error", logging.WARNING, request_id=scope.get("kairos.request_id", ""),
                backend=scope.get("kairos.backend"), kind=exc.kind, error=f"after {sent} body bytes: {exc}",
            )
            raise
        await send({"type": "http.response.body", "body": b""})
    finally:
        if watcher is not None:
            watcher.cancel()
        response.release()


def upstream_failure(exc: UpstreamError, backend: Backend, scope: Scope) -> GatewayError:
    """The JSON error a client sees for a transport failure (the backend's address and the
    details go to the log, with the request id: internal topology is not the client's business)."""
    if exc.kind != "request_body":
        route = scope.get("kairos.route")
        log_event(
            "upstream_error", logging.WARNING, request_id=scope.get("kairos.request_id", ""),
            route=route.name if route is not None else None, backend=backend.address, kind=exc.kind, error=str(exc),
        )
    if isinstance(exc, UpstreamTimeout):
        return GatewayError("timeout", "the upstream did not answer in time")
    if exc.kind == "connect_timeout":
        return GatewayError("timeout", "connecting to the upstream timed out")
    if exc.kind == "connect":
        return GatewayError("upstream", "the upstream refused or could not be reached")
    if exc.kind == "overloaded":
        return GatewayError("upstream_overloaded", "too many requests are waiting for this upstream")
    if exc.kind == "protocol":
        return GatewayError("upstream", "the upstream sent an invalid response")
    if exc.kind == "invalid_request":
        return GatewayError("bad_request", "the request cannot be forwarded: a header or the target holds a control character")
    return GatewayError("upstream", "the upstream closed or reset the connection")


class AttemptFailed(Exception):
    """An attempt's transport failure, with the backend it was made to (already recorded
    against that backend's breaker and outlier detector)."""

    def __init__(self, error: UpstreamError, backend: Backend, index: int) -> None:
        self.error = error
        self.backend = backend
        self.index = index


class Forwarder:
    """The end of every route's chain: pick a backend, forward, stream the answer back.

    `attempt()` is the one try, used by both paths: the balancer picks among
    available backends (healthy, not ejected, breaker letting through), the
    request goes out, and the outcome feeds the backend's breaker and the route's
    outlier detector. The backend's in-flight count spans the whole exchange
    (response streaming included). A route without a `retry` block makes exactly
    one attempt; with one, `_with_retries` runs the loop (backoff, budget, overall
    deadline, a different backend per retry).
    """

    __slots__ = ("route", "client", "limits", "cluster", "outlier")

    def __init__(self, route: CompiledRoute, client: UpstreamClient) -> None:
        self.route = route
        self.client = client
        self.limits = pool_limits(route.policy("connection_pool"))
        self.cluster = route.cluster
        self.outlier = route.cluster.outlier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route
        if route.retry is not None:
            await self._with_retries(scope, receive, send)
            return
        body = request_body(receive) if request_has_body(scope) else None
        try:
            _, backend, response = await self.attempt(scope, self.target(scope), body, route.timeout_s)
        except AttemptFailed as failed:
            raise upstream_failure(failed.error, failed.backend, scope) from None
        try:
            response.read_timeout = route.read_timeout_s
            await relay_response(scope, send, response, receive if body is None else None)
        finally:
            backend.in_flight -= 1

    async def attempt(
        self,
        scope: Scope,
        path: str,
        body: AsyncIterator[bytes] | bytes | StreamedBody | None,
        timeout_s: float,
        exclude: int = -1,
    ) -> tuple[int, Backend, Response]:
        """One try: pick a backend (not the one at index `exclude`), send, wait for the response
        head, record the verdict; returns the backend's index, the backend and the response.

        On success the backend's in-flight count stays raised: the caller lowers it once the
        response is relayed or released. A transport failure raises AttemptFailed (recorded,
        in-flight count lowered); no usable backend raises the GatewayError to answer."""
        # Read once: DNS discovery replaces the balancer (with its members) as a whole.
        balancer = self.cluster.balancer
        i = balancer.pick_index(scope, exclude)
        if i < 0:
            raise self.unavailable()
        route = self.route
        backend = balancer.backends[i]
        breaker = balancer.breakers[i]
        headers = upstream_headers(scope, backend, route.preserve_host, route.strip_headers)
        scope["kairos.backend"] = backend.address
        trace = scope.get("kairos.trace")  # set by the tracing layer: a client span per attempt
        span = None
        if trace is not None:
            span = trace.attempt(scope["method"], backend.origin, backend.connect_host, backend.port, path, headers)
        gen = breaker.acquire()
        backend.in_flight += 1
        try:
            response = await open_exchange(
                self.client, scope, backend, path, headers, body, timeout_s, route.connect_timeout_s, self.limits
            )
        except UpstreamError as exc:
            backend.in_flight -= 1
            self.failed(backend, breaker, gen, exc)
            if span is not None:
                trace.attempt_done(span, error=exc.kind)
            raise AttemptFailed(exc, backend, i) from None
        except BaseException as exc:
            backend.in_flight -= 1
            breaker.release(gen)
            if span is not None:
                trace.attempt_done(span, error=exc.__class__.__name__)
            raise
        self.answered(backend, breaker, gen, response.status)
        if span is not None:
            trace.attempt_done(span, response.status)
        return i, backend, response

    def target(self, scope: Scope) -> str:
        """The upstream request target: internal_path with the raw params, the query unchanged,
        unless the transform layer rewrote them (scope["kairos.upstream_target"])."""
        rewritten = scope.get("kairos.upstream_target")
        if rewritten is not None:
            return rewritten
        path = self.route.template.render(scope["kairos.params"])
        qs = scope.get("query_string")
        return path + "?" + qs.decode("latin-1") if qs else path

    # ------------------------------------------------------------------ outcomes
    def failed(self, backend: Backend, breaker: CircuitBreaker | NoBreaker, gen: int, exc: UpstreamError) -> None:
        if exc.kind in _NOT_THE_BACKENDS:
            # The client's body broke, its request cannot be written, or our own queue for
            # this backend is full: none of it says anything about the backend's health.
            breaker.release(gen)
            return
        count_upstream_error(backend.address, exc.kind)
        breaker.failure(gen)
        if self.outlier is not None:
            self.outlier.failure(backend)

    def answered(self, backend: Backend, breaker: CircuitBreaker | NoBreaker, gen: int, status: int) -> None:
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
        cluster = self.cluster
        for backend, breaker in zip(cluster.backends, cluster.breakers):
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
        if request_has_body(scope):
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
                remaining = deadline - time.monotonic()
                timeout = remaining if policy.per_try_s is None else min(policy.per_try_s, remaining)
                try:
                    i, backend, response = await self.attempt(scope, path, body, timeout, exclude)
                except AttemptFailed as failed:
                    exc, backend = failed.error, failed.backend
                    if holding_retry:
                        budget.release()
                        holding_retry = False
                    if exc.kind in _NEVER_RETRIED or not policy.on_connection_error or attempt >= policy.max_retries:
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
                    i = failed.index
                else:
                    if holding_retry:
                        budget.release()
                        holding_retry = False
                    status = response.status
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


_NOT_THE_BACKENDS = frozenset({"request_body", "invalid_request", "overloaded"})
_NEVER_RETRIED = frozenset({"request_body", "invalid_request"})


def forward_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap:
    """The Forwarder ends every chain: the app after it is never called."""
    return lambda _end: Forwarder(route, deps.upstream)
