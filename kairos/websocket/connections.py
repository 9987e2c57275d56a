"""The gateway's open WebSocket connections, by route, across reloads.

One instance lives as long as the process (not a Runtime): a reload compiles new
routes, but a connection whose route still exists is not touched, and the
per-route count (`max_connections`) carries over. Connections of a route that a
reload removed are closed with 1001 after `server.shutdown_timeout_s`, unless a
later reload brought the route back; at shutdown every connection is closed
with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from kairos.observability.logging import log_event
from kairos.observability.metrics import WEBSOCKET_OPEN
from kairos.websocket.relay import Session


class Connections:
    def __init__(self) -> None:
        self.by_route: dict[str, set[Session]] = {}
        self.routes: frozenset[str] = frozenset()
        # Set when the gateway drains: new upgrades are refused (503), open ones keep going.
        self.draining = False
        self._timers: set[asyncio.TimerHandle] = set()

    def count(self, route: str) -> int:
        sessions = self.by_route.get(route)
        return len(sessions) if sessions else 0

    def total(self) -> int:
        return sum(len(s) for s in self.by_route.values())

    def add(self, session: Session) -> None:
        self.by_route.setdefault(session.route, set()).add(session)
        WEBSOCKET_OPEN.labels(session.route).inc()

    def discard(self, session: Session) -> None:
        sessions = self.by_route.get(session.route)
        if sessions is None or session not in sessions:
            return
        sessions.discard(session)
        WEBSOCKET_OPEN.labels(session.route).dec()
        if not sessions:
            del self.by_route[session.route]

    def set_routes(self, routes: Iterable[str], grace_s: float) -> None:
        """The websocket routes of the config now live; connections of the others close after `grace_s`."""
        self.routes = frozenset(routes)
        gone = [name for name in self.by_route if name not in self.routes]
        if not gone:
            return
        log_event("websocket_route_removed", routes=gone, open=sum(self.count(n) for n in gone), close_in_s=grace_s)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # compiled outside a loop (tests, the CLI): nothing is open there
            return
        handle = loop.call_later(grace_s, self._close_removed, gone)
        self._timers.add(handle)

    def _close_removed(self, names: list[str]) -> None:
        for name in names:
            if name in self.routes:
                continue  # a later reload brought the route back
            for session in list(self.by_route.get(name, ())):
                session.stop(1001, "route removed")

    async def close_all(self, code: int = 1001, reason: str = "going away", wait_s: float = 5.0) -> None:
        """Stop every open connection and wait (at most `wait_s`) until their relays have closed both sides."""
        sessions = [s for group in self.by_route.values() for s in group]
        for session in sessions:
            session.stop(code, reason)
        if sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await asyncio.gather(*(s.done.wait() for s in sessions))

    def cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
