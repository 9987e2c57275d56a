"""Passive health checking (outlier detection), as Envoy's consecutive-5xx detector.

On for a route when it has an `outlier_detection` block. `consecutive_failures`
failures in a row (connect errors, timeouts, resets, 5xx answers) from one
backend eject it for `base_ejection_ms`, doubled on each repeat ejection up to
`max_ejection_ms`. The repeat count decays: a backend that has stayed in
service for `max_ejection_ms` since it last came back starts again from the
base time. At most `max_ejection_percent` of the route's backends are ejected
at once, but one backend can always be ejected.

The ejection state lives on the Backend (it is one server, whichever route saw
it fail) and so survives reloads; the detector holds the route's settings.
A backend comes back lazily: the balancer notices `ejected_until` has passed
(`maybe_return`), and a timer on the event loop does the same so the gauge and
the log do not wait for traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from kairos.config.models import OutlierDetectionConfig
from kairos.observability.logging import log_event
from kairos.upstream.backend import Backend


def maybe_return(backend: Backend, now: float) -> bool:
    """Bring `backend` back if its ejection is over; True when it is (now) not ejected."""
    until = backend.ejected_until
    if not until:
        return True
    if now < until:
        return False
    backend.ejected_until = 0.0
    backend.returned_at = now
    backend.od_failures = 0
    backend.update_available()
    log_event("backend_unejected", backend=backend.address, ejections=backend.ejections)
    return True


class OutlierDetector:
    __slots__ = ("backends", "threshold", "base_s", "max_s", "max_percent", "clock")

    def __init__(
        self,
        config: OutlierDetectionConfig,
        backends: Sequence[Backend],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = tuple(backends)
        self.threshold = config.consecutive_failures
        self.base_s = config.base_ejection_ms / 1000
        self.max_s = config.max_ejection_ms / 1000
        self.max_percent = config.max_ejection_percent
        self.clock = clock

    def success(self, backend: Backend) -> None:
        backend.od_failures = 0

    def failure(self, backend: Backend) -> None:
        if backend.ejected_until:
            return
        backend.od_failures += 1
        if backend.od_failures >= self.threshold:
            self._try_eject(backend)

    def _try_eject(self, backend: Backend) -> None:
        now = self.clock()
        ejected = 0
        for b in self.backends:
            if b.ejected_until and not maybe_return(b, now):
                ejected += 1
        # The cap never stops the first ejection (Envoy: "one host can always be ejected").
        if ejected and (ejected + 1) * 100 > self.max_percent * len(self.backends):
            log_event("backend_ejection_skipped", 30, backend=backend.address, reason="max_ejection_percent",
                      ejected=ejected)
            backend.od_failures = 0
            return
        if backend.ejections and backend.returned_at and now - backend.returned_at >= self.max_s:
            backend.ejections = 0  # behaved for a long time: start from the base again
        duration = min(self.base_s * (2 ** backend.ejections), self.max_s)
        backend.ejections += 1
        backend.ejected_until = now + duration
        backend.od_failures = 0
        backend.update_available()
        log_event(
            "backend_ejected", 30, backend=backend.address, ejection_ms=round(duration * 1000),
            ejections=backend.ejections, consecutive_failures=self.threshold,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.clock is time.monotonic:
            loop.call_later(duration + 0.001, _return_later, backend, backend.ejected_until)


def _return_later(backend: Backend, until: float) -> None:
    if backend.ejected_until == until:
        maybe_return(backend, max(time.monotonic(), until))
