"""The cluster: a route's set of backends with its balancer, breakers and outlier detector."""

from __future__ import annotations

from collections.abc import Sequence

from kairos.observability.metrics import BACKEND_UP, BREAKER_STATE
from kairos.upstream.backend import Backend
from kairos.upstream.balancer import Balancer
from kairos.upstream.breaker import CircuitBreaker, NoBreaker
from kairos.upstream.outlier import OutlierDetector


class Cluster:
    """A route's backends, their weights on this route, the breakers consulted for
    them on this route, the outlier detector (if any), and the balancer.

    The same address may stand in several routes (with different weights): the
    Backend object is shared, its weight belongs to the cluster."""

    __slots__ = ("backends", "weights", "balancer", "breakers", "outlier")

    def __init__(
        self,
        backends: Sequence[Backend],
        weights: Sequence[int],
        balancer: Balancer,
        breakers: Sequence[CircuitBreaker | NoBreaker] | None = None,
        outlier: OutlierDetector | None = None,
    ) -> None:
        self.backends = tuple(backends)
        self.weights = tuple(weights)
        self.balancer = balancer
        self.breakers = tuple(breakers) if breakers is not None else balancer.breakers
        self.outlier = outlier

    def replace_members(
        self, backends: Sequence[Backend], weights: Sequence[int], breakers: Sequence[CircuitBreaker | NoBreaker]
    ) -> None:
        """New members (DNS discovery). A request reads `cluster.balancer` once and takes the
        backend and breaker at the picked index from that balancer, so it never mixes two
        member lists; backends that stay are the same objects, with their state."""
        self.backends = tuple(backends)
        self.weights = tuple(weights)
        self.breakers = tuple(breakers)
        if self.outlier is not None:
            self.outlier.backends = self.backends
        self.balancer = self.balancer.with_members(self.backends, self.weights, self.breakers)


def forget_backends(addresses: set[str]) -> None:
    """Drop the per-backend gauges of backends a reload removed (no stale series).

    Counters (errors, transitions) stay: they are totals, and Prometheus expects them to."""
    for address in addresses:
        for gauge in (BACKEND_UP, BREAKER_STATE):
            try:
                gauge.remove(address)
            except KeyError:
                pass
