"""Active health checking: one background probe loop per checked backend.

A backend is probed when it has a `health_check_path`, or when its route has a
`health_check` block with a `path` (the backend's own path wins). Each probe is
a GET through the gateway's upstream client (`gateway.upstream.http`, httpx API)
bounded by `timeout_ms`; `unhealthy_threshold` consecutive failures mark the
backend down, `healthy_threshold` consecutive successes mark it up again.
Probes never run on the request path.

`HealthSupervisor.sync(specs)` is called at start and after each reload: loops
whose backend, path and settings did not change keep running (and the backend
keeps its verdict); the others are cancelled or started. `aclose()` stops all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from kairos.config.models import HealthCheckConfig
from kairos.observability.logging import log_event
from kairos.tasks import cancel_and_wait
from kairos.upstream.backend import Backend


@dataclass(frozen=True)
class HealthSpec:
    """What to probe for one backend; equal specs across a reload keep their loop."""

    backend: Backend
    path: str
    config: HealthCheckConfig

    def same_as(self, other: HealthSpec) -> bool:
        return self.backend is other.backend and self.path == other.path and self.config == other.config


class HealthState:
    """The threshold state machine (no I/O, no clock: fed one probe verdict at a time)."""

    __slots__ = ("backend", "unhealthy_threshold", "healthy_threshold", "successes", "failures")

    def __init__(self, backend: Backend, config: HealthCheckConfig) -> None:
        self.backend = backend
        self.unhealthy_threshold = config.unhealthy_threshold
        self.healthy_threshold = config.healthy_threshold
        self.successes = 0
        self.failures = 0

    def record(self, ok: bool, detail: str = "") -> bool | None:
        """Count one probe; returns the new verdict when it changed, else None."""
        backend = self.backend
        if ok:
            self.failures = 0
            self.successes += 1
            if not backend.healthy and self.successes >= self.healthy_threshold:
                return self._mark(True, detail)
        else:
            self.successes = 0
            self.failures += 1
            if backend.healthy and self.failures >= self.unhealthy_threshold:
                return self._mark(False, detail)
        return None

    def _mark(self, healthy: bool, detail: str) -> bool:
        backend = self.backend
        backend.healthy = healthy
        backend.update_available()
        log_event(
            "backend_healthy" if healthy else "backend_unhealthy",
            20 if healthy else 30,
            backend=backend.address,
            consecutive=self.successes if healthy else self.failures,
            detail=detail,
        )
        return healthy


class HealthChecker:
    def __init__(self, spec: HealthSpec, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self.http = http
        cfg = spec.config
        self.state = HealthState(spec.backend, cfg)
        self.interval_s = cfg.interval_ms / 1000
        self.timeout_s = cfg.timeout_ms / 1000
        self.ranges = cfg.status_ranges()
        self.url = spec.backend.origin + spec.path
        host = spec.backend.host_header.decode("ascii")  # a discovered backend is probed by its name
        self.headers = {"host": host, "user-agent": "kairos-health-check", "connection": "keep-alive"}

    async def probe(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.http.get(self.url, headers=self.headers, timeout=self.timeout_s)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return False, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        status = response.status_code
        for lo, hi in self.ranges:
            if lo <= status <= hi:
                return True, str(status)
        return False, f"status {status}"

    async def run(self) -> None:
        while True:
            ok, detail = await self.probe()
            self.state.record(ok, detail)
            await asyncio.sleep(self.interval_s)


class HealthSupervisor:
    def __init__(self) -> None:
        self.tasks: dict[str, tuple[HealthSpec, asyncio.Task[None]]] = {}

    def sync(self, specs: dict[str, HealthSpec], http: httpx.AsyncClient) -> None:
        """Make the running loops match `specs` (must be called with the event loop running)."""
        for address, (spec, task) in list(self.tasks.items()):
            new = specs.get(address)
            if new is None or not new.same_as(spec):
                task.cancel()
                del self.tasks[address]
                if new is None and spec.backend.healthy is False:
                    # No longer checked: nothing will ever mark it up again.
                    spec.backend.healthy = True
                    spec.backend.update_available()
        for address, spec in specs.items():
            if address in self.tasks:
                continue
            checker = HealthChecker(spec, http)
            task = asyncio.get_running_loop().create_task(checker.run(), name=f"kairos-health {address}")
            self.tasks[address] = (spec, task)

    async def aclose(self) -> None:
        tasks = [task for _, task in self.tasks.values()]
        self.tasks.clear()
        await cancel_and_wait(tasks)
