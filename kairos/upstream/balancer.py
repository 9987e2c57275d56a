"""Balancers: each picks one backend among those currently available."""

from __future__ import annotations

from collections.abc import Sequence

from kairos.types import Scope
from kairos.upstream.cluster import Backend


class Balancer:
    def __init__(self, backends: Sequence[Backend], weights: Sequence[int]) -> None:
        self.backends = tuple(backends)
        self.weights = tuple(weights)

    def pick(self, scope: Scope) -> Backend | None:
        raise NotImplementedError


class RoundRobin(Balancer):
    """Strict rotation over the available backends."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int]) -> None:
        super().__init__(backends, weights)
        self._next = 0

    def pick(self, scope: Scope) -> Backend | None:
        backends = self.backends
        n = len(backends)
        for _ in range(n):
            backend = backends[self._next % n]
            self._next = (self._next + 1) % n
            if backend.healthy:
                return backend
        return None


def make_balancer(strategy: str, backends: Sequence[Backend], weights: Sequence[int]) -> Balancer:
    return RoundRobin(backends, weights)
