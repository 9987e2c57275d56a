"""Every Prometheus metric kairos exports, declared once.

Label children on the request path are cached by the code that uses them
(`.labels()` costs ~1 µs, a cached child's `.inc()` ~0.3 µs).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("kairos_requests_total", "Proxied requests", ["route", "method", "status"])
REQUEST_DURATION = Histogram(
    "kairos_request_duration_seconds", "Proxied request duration", ["route", "method"], buckets=REQUEST_BUCKETS
)
UPSTREAM_DURATION = Histogram(
    "kairos_upstream_request_duration_seconds", "Upstream exchange duration (until response headers)", ["backend"],
    buckets=REQUEST_BUCKETS,
)
UPSTREAM_ERRORS = Counter("kairos_upstream_errors_total", "Upstream failures", ["backend", "kind"])
ACTIVE_REQUESTS = Gauge("kairos_active_requests", "Requests in flight", multiprocess_mode="livesum")
CONFIG_RELOADS = Counter("kairos_config_reloads_total", "Config reloads", ["result"])
BUILD_INFO = Gauge("kairos_build_info", "Build information", ["version"], multiprocess_mode="max")
BACKEND_UP = Gauge("kairos_backend_up", "1 when the backend is considered healthy", ["backend"], multiprocess_mode="max")
BREAKER_STATE = Gauge(
    "kairos_circuit_breaker_state", "0 closed, 1 open, 2 half-open", ["backend"], multiprocess_mode="max"
)
BREAKER_TRANSITIONS = Counter("kairos_circuit_breaker_transitions_total", "Breaker state changes", ["backend", "to"])
RETRIES = Counter("kairos_retries_total", "Retries made", ["route", "reason"])
RATELIMITED = Counter("kairos_ratelimited_total", "Requests refused by rate limiting", ["route"])
RATELIMIT_BACKEND_ERRORS = Counter("kairos_ratelimit_backend_errors_total", "Rate-limit storage failures")
AUTH_FAILURES = Counter("kairos_auth_failures_total", "Rejected authentications", ["route", "reason"])
UPSTREAM_CONNECTIONS_IN_USE = Gauge(
    "kairos_upstream_connections_in_use", "Upstream connections carrying an exchange", ["backend"],
    multiprocess_mode="livesum",
)
UPSTREAM_REQUESTS_PENDING = Gauge(
    "kairos_upstream_requests_pending", "Requests waiting for an upstream connection", ["backend"],
    multiprocess_mode="livesum",
)
CACHE_REQUESTS = Counter("kairos_cache_requests_total", "Requests seen by the response cache", ["route", "result"])
CACHE_BYTES = Gauge("kairos_cache_bytes", "Bytes held by the in-process response cache", ["backend"],
                    multiprocess_mode="livesum")
CACHE_ENTRIES = Gauge("kairos_cache_entries", "Entries in the in-process response cache", ["backend"],
                      multiprocess_mode="livesum")
CACHE_EVICTIONS = Counter("kairos_cache_evictions_total", "Entries evicted to stay within memory_bytes", ["backend"])
CACHE_BACKEND_ERRORS = Counter("kairos_cache_backend_errors_total", "Cache storage failures (requests bypassed)")
GATEWAY_ERRORS = Counter(
    "kairos_gateway_errors_total", "Answers the gateway gave itself (its JSON errors), by error kind", ["route", "kind"]
)
DISCOVERY_RESOLUTIONS = Counter("kairos_discovery_resolutions_total", "DNS discovery lookups", ["dns_name", "result"])
DISCOVERY_CHANGES = Counter(
    "kairos_discovery_membership_changes_total", "Backends added to or removed from a route by DNS discovery",
    ["route", "change"],
)
DISCOVERY_ENDPOINTS = Gauge(
    "kairos_discovery_endpoints", "Addresses in a name's last good DNS answer", ["dns_name"], multiprocess_mode="max"
)
WEBSOCKET_OPEN = Gauge(
    "kairos_websocket_connections", "Open proxied WebSocket connections", ["route"], multiprocess_mode="livesum"
)
# Not kairos_websocket_connections_total: prometheus-client reserves that name for the gauge above.
WEBSOCKET_UPGRADES = Counter(
    "kairos_websocket_upgrades_total", "WebSocket upgrade requests by outcome", ["route", "outcome"]
)
WEBSOCKET_MESSAGES = Counter(
    "kairos_websocket_messages_total", "Relayed WebSocket messages", ["route", "direction"]
)
WEBSOCKET_BYTES = Counter(
    "kairos_websocket_bytes_total", "Relayed WebSocket payload bytes", ["route", "direction"]
)


# --------------------------------------------------------------------------- cached children

_requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_upstream_durations: dict[str, Any] = {}
_upstream_errors: dict[tuple[str, str], Any] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one proxied request and its duration (both label children cached under one key)."""
    key = (route, method, status)
    children = _requests.get(key)
    if children is None:
        children = _requests[key] = (REQUESTS.labels(route, method, str(status)), REQUEST_DURATION.labels(route, method))
    children[0].inc()
    children[1].observe(seconds)


_gateway_errors: dict[tuple[str, str], Any] = {}


def count_gateway_error(route: str, kind: str) -> None:
    child = _gateway_errors.get((route, kind))
    if child is None:
        child = _gateway_errors[(route, kind)] = GATEWAY_ERRORS.labels(route, kind)
    child.inc()


class ActiveRequests:
    """`kairos_active_requests`: a plain int read at scrape time in one-process mode (no lock per
    request); the multiprocess gauge (inc/dec on a shared file) under several workers."""

    def __init__(self) -> None:
        self.n = 0
        self.shared = multiprocess_dir() is not None
        if not self.shared:
            ACTIVE_REQUESTS.set_function(lambda: self.n)

    def inc(self) -> None:
        if self.shared:
            ACTIVE_REQUESTS.inc()
        else:
            self.n += 1

    def dec(self) -> None:
        if self.shared:
            ACTIVE_REQUESTS.dec()
        else:
            self.n -= 1


class PoolGauges:
    """Connections in use and requests pending per upstream origin, read from the pool.

    One process: read at scrape time (nothing per request). Several workers: each
    worker writes its values to the shared files once a second."""

    def __init__(self) -> None:
        self.tracked: dict[str, tuple[Any, Any]] = {}
        self._timer: Any = None

    def track(self, label: str, in_use: Any, pending: Any) -> None:
        """Report `label`'s values from these functions (replacing an earlier pool's)."""
        self.tracked[label] = (in_use, pending)
        if multiprocess_dir() is None:
            UPSTREAM_CONNECTIONS_IN_USE.labels(label).set_function(in_use)
            UPSTREAM_REQUESTS_PENDING.labels(label).set_function(pending)
        elif self._timer is None:
            self._refresh()

    def _refresh(self) -> None:
        import asyncio

        for label, (in_use, pending) in self.tracked.items():
            UPSTREAM_CONNECTIONS_IN_USE.labels(label).set(in_use())
            UPSTREAM_REQUESTS_PENDING.labels(label).set(pending())
        try:
            self._timer = asyncio.get_running_loop().call_later(1.0, self._refresh) if self.tracked else None
        except RuntimeError:
            self._timer = None

    def drop(self, label: str) -> None:
        if self.tracked.pop(label, None) is not None:
            for gauge in (UPSTREAM_CONNECTIONS_IN_USE, UPSTREAM_REQUESTS_PENDING):
                with contextlib.suppress(KeyError):
                    gauge.remove(label)


POOL_GAUGES = PoolGauges()


def observe_upstream(backend: str, seconds: float) -> None:
    """One upstream exchange's duration until its response headers, for `backend`."""
    hist = _upstream_durations.get(backend)
    if hist is None:
        hist = _upstream_durations[backend] = UPSTREAM_DURATION.labels(backend)
    hist.observe(seconds)


UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "status")


def count_upstream_error(backend: str, kind: str) -> None:
    """One upstream failure; `kind` is connect, timeout, reset or status (anything else counts as reset)."""
    if kind not in UPSTREAM_ERROR_KINDS:
        kind = "connect" if kind == "connect_timeout" else "reset"
    key = (backend, kind)
    child = _upstream_errors.get(key)
    if child is None:
        child = _upstream_errors[key] = UPSTREAM_ERRORS.labels(backend, kind)
    child.inc()


_reloads: dict[str, Any] = {}


def count_reload(result: str) -> None:
    child = _reloads.get(result)
    if child is None:
        child = _reloads[result] = CONFIG_RELOADS.labels(result)
    child.inc()


def set_build_info(version: str) -> None:
    BUILD_INFO.labels(version).set(1)


# --------------------------------------------------------------------------- multiprocess + exposition

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def prepare_multiprocess_dir(path: str | None = None) -> tuple[str, bool]:
    """Create (or empty) the directory the workers share; returns (path, created_by_us).

    Must run before any worker imports prometheus_client (the value class is chosen at import).
    Only prometheus-client's own `*.db` files are removed from an existing directory.
    """
    created = False
    if path is None:
        path = tempfile.mkdtemp(prefix="kairos-metrics-")
        created = True
    else:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path
    return path, created


def mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters keep counting in the totals)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(pid)


_registry: Any = None


def _scrape_registry() -> Any:
    global _registry
    if _registry is None:
        if multiprocess_dir():
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # reads every worker's files on each collect
            _registry = registry
        else:
            from prometheus_client import REGISTRY

            _registry = REGISTRY
    return _registry


def render(accept: str | None) -> tuple[bytes, str]:
    """The exposition for a scrape: Prometheus text, or OpenMetrics when `Accept` asks for it."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(_scrape_registry()), content_type


ACTIVE = ActiveRequests()
