"""What the admin API acts on.

* `LiveControl`: one gateway process (`kairos serve`): the listener runs on the
  gateway's own event loop and swaps the Gateway's Runtime with the same
  compile-and-swap the file reload uses; clusters are read from the live Backends.
* `SupervisorControl`: `kairos serve --workers N`: the listener runs in the
  supervisor. A change is validated and compiled there (a dry compile: nothing is
  started), written to the config file, and every worker reloads it on SIGHUP, the
  same reload an operator's `kill -HUP` triggers; drain goes the same way (the
  drained-backends file, then SIGHUP). Backend state and statistics come from the
  workers' shared prometheus directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from kairos.admin.document import router_id
from kairos.upstream.drain import apply_drained, read_drained, write_drained
from kairos.config import GatewayConfig
from kairos.observability import metrics
from kairos.observability.logging import log_event
from kairos.upstream.breaker import STATE_NAMES


def _route_ids(config: GatewayConfig) -> list[tuple[str, Any]]:
    return [(router_id(rc), rc) for rc in config.routers]


def reload_counts() -> dict[str, int]:
    """kairos_config_reloads_total by result (every worker's, under --workers)."""
    out = {"success": 0, "error": 0}
    families: Any
    if metrics.multiprocess_dir():
        from prometheus_client import multiprocess

        families = multiprocess.MultiProcessCollector(None).collect()
    else:
        families = metrics.CONFIG_RELOADS.collect()
    for family in families:
        if family.name != "kairos_config_reloads":
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("result") in out:
                out[s.labels["result"]] += int(s.value)
    return out


class LiveControl:
    mode = "single-process"

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        apply_drained(gateway.runtime.backends, read_drained(gateway.config_path))

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    @property
    def workers(self) -> int:
        return 1

    @property
    def started_at(self) -> float:
        return time.time() - (time.monotonic() - self.gateway.started_at)

    def check(self, config: GatewayConfig) -> None:
        """Nothing to do before the swap: the swap compiles first and changes nothing on failure."""

    def activate(self, config: GatewayConfig) -> None:
        """Compile and swap through the reload's own path (Gateway.apply); raises, the old Runtime staying, on failure."""
        self.gateway.apply(config, "admin")

    @property
    def last_reload(self) -> dict[str, Any] | None:
        return self.gateway.last_reload

    def written(self, digest: bytes) -> None:
        # The file watcher will see our own write: the same digest makes it a no-op.
        self.gateway.config_digest = digest

    def revert(self, config: GatewayConfig) -> None:
        """Back to `config` through the same path (drained state, counts and log included)."""
        self.gateway.apply(config, "admin_revert")

    def clusters(self) -> list[dict[str, Any]]:
        runtime = self.gateway.runtime
        now = time.monotonic()
        rows: dict[str, dict[str, Any]] = {}
        for route in runtime.routes:
            rid = router_id(route.config)
            cluster = route.cluster
            for backend, weight in zip(cluster.backends, cluster.weights):
                row = rows.get(backend.address)
                if row is None:
                    breaker = backend.breaker
                    state = STATE_NAMES[breaker.state] if breaker is not None else "closed"
                    ejected = bool(backend.ejected_until and backend.ejected_until > now)
                    row = rows[backend.address] = {
                        "address": backend.address,
                        "healthy": backend.healthy,
                        "available": backend.available and not ejected,
                        "drained": backend.drained,
                        "breaker": state if breaker is not None and breaker.__class__.__name__ != "NoBreaker" else "disabled",
                        "ejected": ejected,
                        "ejected_for_s": round(backend.ejected_until - now, 3) if ejected else 0.0,
                        "ejections": backend.ejections,
                        "in_flight": backend.in_flight,
                        "routes": [],
                    }
                row["routes"].append({"id": rid, "weight": weight})
        return list(rows.values())

    async def purge_cache(self, route: str | None, prefix: str | None) -> dict[str, Any]:
        removed = await self.gateway.deps.caches.purge(route, prefix)
        return {"removed": removed, "stores": "every store of this process"}

    def drain(self, address: str, drained: bool) -> bool:
        runtime = self.gateway.runtime
        if address not in runtime.backends:
            return False
        addresses = read_drained(self.gateway.config_path) | {b.address for b in runtime.backends.values() if b.drained}
        addresses = addresses | {address} if drained else addresses - {address}
        if self.gateway.config_path:
            try:
                write_drained(self.gateway.config_path, addresses)  # a restart keeps the maintenance state
            except OSError as exc:
                log_event("drain_not_persisted", 30, backend=address, error=str(exc))
        apply_drained(runtime.backends, addresses)
        return True


class SupervisorControl:
    mode = "workers"

    def __init__(self, config_path: str, workers: int, signal_workers: Callable[[], None]) -> None:
        from kairos.config import load_config

        self.config_path = config_path
        self._workers = workers
        self.signal_workers = signal_workers
        self._config = load_config(config_path)
        self._seen = self._stamp()
        self.started = time.time()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def config(self) -> GatewayConfig:
        """The file's config: re-read when the file changed under us (an editor, a deploy), as the workers do."""
        from kairos.config import ConfigError, load_config

        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            try:
                self._config = load_config(self.config_path)
            except ConfigError:
                pass  # the workers keep their config too
        return self._config

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def started_at(self) -> float:
        return self.started

    def check(self, config: GatewayConfig) -> None:
        """A dry compile, so a config that validates but cannot be compiled never reaches the workers."""
        from kairos.gateway import Gateway  # a throwaway Gateway: the same compile a reload runs

        trial = Gateway(config, None)
        # Its Backends set kairos_backend_up to 1 in this process; in a shared metrics directory
        # (max across processes) that would hide a worker's 0, so leave 0 behind instead.
        for backend in trial.runtime.backends.values():
            backend._up.set(0)

    def activate(self, config: GatewayConfig) -> None:
        self._config = config

    revert = activate  # nothing reached the workers yet: only the supervisor's copy goes back

    def written(self, digest: bytes) -> None:
        self._seen = self._stamp()
        self.signal_workers()
        log_event("config_pushed", trigger="admin", source=self.config_path, workers=self._workers)

    def clusters(self) -> list[dict[str, Any]]:
        from prometheus_client import multiprocess

        up: dict[str, float] = {}
        breaker: dict[str, float] = {}
        if metrics.multiprocess_dir():
            for family in multiprocess.MultiProcessCollector(None).collect():
                target = {"kairos_backend_up": up, "kairos_circuit_breaker_state": breaker}.get(family.name)
                if target is None:
                    continue
                for s in family.samples:
                    target[s.labels.get("backend", "")] = s.value
        drained = read_drained(self.config_path)
        rows: dict[str, dict[str, Any]] = {}
        for rid, rc in _route_ids(self.config):
            for b in rc.backend_list:
                row = rows.get(b.address)
                if row is None:
                    state = breaker.get(b.address)
                    row = rows[b.address] = {
                        "address": b.address,
                        "healthy": up.get(b.address, 1.0) >= 1,
                        "available": up.get(b.address, 1.0) >= 1 and b.address not in drained,
                        "drained": b.address in drained,
                        "breaker": STATE_NAMES[int(state)] if state is not None else "closed",
                        "ejected": False,
                        "ejected_for_s": 0.0,
                        "ejections": 0,
                        "in_flight": None,  # per worker, not shared
                        "routes": [],
                    }
                row["routes"].append({"id": rid, "weight": b.weight})
        return list(rows.values())

    @property
    def last_reload(self) -> dict[str, Any] | None:
        return None  # per worker; the counts in /admin/status cover them all

    async def purge_cache(self, route: str | None, prefix: str | None) -> dict[str, Any]:
        """The Redis-backed caches only: a memory cache lives inside each worker, out of the supervisor's reach."""
        from kairos.cache.purge import redis_caches
        from kairos.cache.storage import RedisStore
        from kairos.edge import redis_url_for

        import redis.asyncio as aioredis

        removed = 0
        for (url, key_prefix), _ in redis_caches(self.config, redis_url_for, route).items():
            client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
            try:
                removed += await RedisStore(client, key_prefix).purge(route, prefix)
            finally:
                await client.aclose()
        return {"removed": removed, "stores": "redis only (memory caches are per worker: not purged)"}

    def drain(self, address: str, drained: bool) -> bool:
        """Written to the drained-backends file; every worker applies it on the SIGHUP that follows."""
        if address not in {b.address for rc in self.config.routers for b in rc.backend_list}:
            return False
        addresses = read_drained(self.config_path)
        write_drained(self.config_path, addresses | {address} if drained else addresses - {address})
        self.signal_workers()
        return True

