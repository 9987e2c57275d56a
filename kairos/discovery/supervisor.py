"""The discovery loops: one background task per distinct lookup, never on the request path.

Each loop resolves its name, and when the answer differs from the last good
one, applies it to every route cluster that uses it. It sleeps `refresh_ms`
(or the answer's TTL with `respect_ttl`, at least `min_refresh_ms`) between
resolutions; a failed resolution keeps the last good answer and tries again
after `refresh_ms`.

`sync(clusters)` is called with each compiled runtime (start and every reload):
the new clusters get the last good answers at once (a reload never empties a
route that DNS already filled), loops nobody needs any more stop, new ones start.
`on_change(added, removed)` lets the owner follow membership (health checks,
metrics of removed backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from kairos.discovery.members import DiscoveredCluster, Lookup
from kairos.discovery.resolver import DnsResolver, Endpoint, ResolutionError
from kairos.observability import metrics
from kairos.observability.logging import log_event
from kairos.tasks import cancel_and_wait


class DiscoverySupervisor:
    def __init__(self, on_change: Callable[[list[str], list[str]], None] | None = None) -> None:
        self.on_change = on_change
        self.clusters: tuple[DiscoveredCluster, ...] = ()
        self.answers: dict[Lookup, list[Endpoint]] = {}
        self.tasks: dict[Lookup, asyncio.Task[None]] = {}
        self.first_round: dict[Lookup, asyncio.Event] = {}
        self.running = False

    # ------------------------------------------------------------------ membership
    def sync(self, clusters: Sequence[DiscoveredCluster]) -> None:
        """Bind the clusters of a newly compiled runtime (call before it serves)."""
        self.clusters = tuple(clusters)
        wanted: set[Lookup] = set()
        for dc in self.clusters:
            wanted |= dc.lookups
            self._apply(dc)
        for lookup in list(self.tasks):
            if lookup not in wanted:
                self.tasks.pop(lookup).cancel()
                self.first_round.pop(lookup, None)
        for lookup in list(self.answers):
            if lookup not in wanted:
                del self.answers[lookup]
                with contextlib.suppress(KeyError):
                    metrics.DISCOVERY_ENDPOINTS.remove(lookup.name)
        if self.running:
            self._start_missing(wanted)

    def _apply(self, dc: DiscoveredCluster) -> tuple[list[str], list[str]] | None:
        change = dc.apply(self.answers)
        if change is None:
            return None
        added, removed = change
        for change_kind, addresses in (("added", added), ("removed", removed)):
            if addresses:
                metrics.DISCOVERY_CHANGES.labels(dc.route, change_kind).inc(len(addresses))
        log_event(
            "discovery_members_changed", route=dc.route, added=added, removed=removed,
            members=[b.address for b in dc.cluster.backends],
        )
        if self.on_change is not None:
            self.on_change(added, removed)
        return change

    def answer(self, lookup: Lookup, endpoints: list[Endpoint]) -> None:
        """A good answer for `lookup`: apply it to every cluster using it (if it changed)."""
        metrics.DISCOVERY_ENDPOINTS.labels(lookup.name).set(len(endpoints))
        if self.answers.get(lookup) == endpoints:
            return
        self.answers[lookup] = endpoints
        for dc in self.clusters:
            if lookup in dc.lookups:
                self._apply(dc)

    # ------------------------------------------------------------------ loops
    async def start(self, wait_s: float | None = None) -> None:
        """Start the loops; wait up to `wait_s` (default: twice the longest lookup timeout)
        for each to have tried once, so the first requests find the backends DNS knows."""
        self.running = True
        wanted: set[Lookup] = set()
        for dc in self.clusters:
            wanted |= dc.lookups
        self._start_missing(wanted)
        if wait_s is None and wanted:
            wait_s = 2 * max(lookup.timeout_ms for lookup in wanted) / 1000
        events = [self.first_round[lk].wait() for lk in wanted if lk in self.first_round]
        if events and wait_s:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await asyncio.gather(*events)

    def _start_missing(self, wanted: set[Lookup]) -> None:
        loop = asyncio.get_running_loop()
        for lookup in wanted:
            if lookup not in self.tasks:
                self.first_round[lookup] = asyncio.Event()
                self.tasks[lookup] = loop.create_task(self.run(lookup), name=f"kairos-discovery {lookup.name}")

    async def resolve(self, lookup: Lookup, resolver: DnsResolver) -> tuple[list[Endpoint], int]:
        if lookup.kind == "dns_srv":
            return await resolver.srv(lookup.name)
        ips, ttl = await resolver.addresses(lookup.name)
        return [Endpoint(ip, 0, 0, lookup.name) for ip in ips], ttl

    async def run(self, lookup: Lookup) -> None:
        resolver = DnsResolver(lookup.discovery_config())
        refresh_s = lookup.refresh_ms / 1000
        failing = False
        while True:
            try:
                endpoints, ttl = await self.resolve(lookup, resolver)
            except ResolutionError as exc:
                metrics.DISCOVERY_RESOLUTIONS.labels(lookup.name, "error").inc()
                kept = len(self.answers.get(lookup, ()))
                log_event("discovery_failed", logging.WARNING, name=lookup.name, type=lookup.kind,
                          error=str(exc), kept=kept)
                failing = True
                delay = refresh_s
            else:
                metrics.DISCOVERY_RESOLUTIONS.labels(lookup.name, "success").inc()
                if failing:
                    log_event("discovery_recovered", name=lookup.name, type=lookup.kind, endpoints=len(endpoints))
                    failing = False
                self.answer(lookup, endpoints)
                delay = max(ttl, lookup.min_refresh_ms / 1000) if lookup.respect_ttl else refresh_s
            event = self.first_round.get(lookup)
            if event is not None:
                event.set()
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        self.running = False
        tasks = list(self.tasks.values())
        self.tasks.clear()
        await cancel_and_wait(tasks)

