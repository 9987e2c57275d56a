"""Balancers: each picks one backend among those currently available.

Available = healthy per active checks, not ejected by outlier detection, not
drained (admin API), and its breaker letting requests through (Closed, or Half-open with a free probe
slot). `pick_index(scope, exclude)` returns the index of the chosen backend in
the cluster (-1: none left); `exclude` is the backend a retry wants to avoid,
used only when another one is available. With `panic=True` (the route's
`panic_mode`), when no backend is available the balancer ignores health and
ejection (not breakers) and picks among all of them, as Envoy's panic threshold.

No locks: the event loop runs one pick at a time, so the pick and the breaker
slot the Forwarder takes right after it are atomic.
"""

from __future__ import annotations

import hashlib
import random
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate

from kairos.types import Scope
from kairos.upstream.breaker import CLOSED, NO_BREAKER, CircuitBreaker, NoBreaker
from kairos.upstream.backend import Backend
from kairos.upstream.outlier import maybe_return

VNODES_PER_WEIGHT = 160


class Balancer:
    def __init__(
        self,
        backends: Sequence[Backend],
        weights: Sequence[int],
        *,
        breakers: Sequence[CircuitBreaker | NoBreaker] | None = None,
        panic: bool = False,
        hash_on: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.backends = tuple(backends)
        self.weights = tuple(weights) if weights else (1,) * len(self.backends)
        self.breakers = tuple(breakers) if breakers is not None else (NO_BREAKER,) * len(self.backends)
        self.panic = panic
        self.hash_on = hash_on
        self.clock = clock
        self.rng = rng or random.Random()
        self.n = len(self.backends)

    def with_members(
        self, backends: Sequence[Backend], weights: Sequence[int], breakers: Sequence[CircuitBreaker | NoBreaker]
    ) -> Balancer:
        """A balancer of the same kind and options over other members (DNS discovery)."""
        return type(self)(
            backends, weights, breakers=breakers, panic=self.panic, hash_on=self.hash_on, clock=self.clock, rng=self.rng
        )

    def pick(self, scope: Scope) -> Backend | None:
        i = self.pick_index(scope)
        return None if i < 0 else self.backends[i]

    def pick_index(self, scope: Scope, exclude: int = -1) -> int:
        i = self.choose(scope, exclude, False)
        if i >= 0:
            return i
        if exclude >= 0:
            i = self.choose(scope, -1, False)
            if i >= 0:
                return i
        if self.panic:
            i = self.choose(scope, exclude, True)
            if i < 0 and exclude >= 0:
                i = self.choose(scope, -1, True)
        return i

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        raise NotImplementedError

    def ok(self, i: int, panic: bool) -> bool:
        b = self.backends[i]
        if b.drained:  # maintenance: not even panic mode sends new requests there
            return False
        if not b.available and not panic:
            if not (b.healthy and maybe_return(b, self.clock())):
                return False
        br = self.breakers[i]
        return br.state == CLOSED or br.can_pass()

    def candidates(self, exclude: int, panic: bool) -> list[int]:
        return [i for i in range(self.n) if i != exclude and self.ok(i, panic)]


class RoundRobin(Balancer):
    """Strict rotation over the available backends."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int], **kw) -> None:
        super().__init__(backends, weights, **kw)
        self._next = 0

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        n = self.n
        i = self._next
        for _ in range(n):
            if i >= n:
                i = 0
            if i != exclude:
                b = self.backends[i]
                br = self.breakers[i]
                # Inlined fast path of ok(): available and breaker closed.
                if (b.available and br.state == CLOSED) or self.ok(i, panic):
                    self._next = i + 1
                    return i
            i += 1
        return -1


class SmoothWeighted(Balancer):
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int], **kw) -> None:
        super().__init__(backends, weights, **kw)
        self.current = [0] * self.n

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        current = self.current
        weights = self.weights
        total = 0
        best = -1
        for i in range(self.n):
            if i == exclude or not self.ok(i, panic):
                continue
            w = weights[i]
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best


class LeastConnections(Balancer):
    """Fewest requests in flight through this process (divided by weight); ties by rotation."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int], **kw) -> None:
        super().__init__(backends, weights, **kw)
        self._start = 0

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        n = self.n
        start = self._start
        self._start = start + 1 if start + 1 < n else 0
        best = -1
        best_load = 0.0
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            if i == exclude or not self.ok(i, panic):
                continue
            load = self.backends[i].in_flight / self.weights[i]
            if best < 0 or load < best_load:
                best, best_load = i, load
        return best


class Random(Balancer):
    """Uniform (or weight-proportional) random choice."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int], **kw) -> None:
        super().__init__(backends, weights, **kw)
        self.uniform = len(set(self.weights)) <= 1
        self.cumulative = list(accumulate(self.weights))

    def _draw(self) -> int:
        if self.uniform:
            return self.rng.randrange(self.n)
        return bisect_right(self.cumulative, self.rng.random() * self.cumulative[-1])

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        if self.n == 0:
            return -1
        i = self._draw()
        if i != exclude and self.ok(i, panic):
            return i
        ok = self.candidates(exclude, panic)
        if not ok:
            return -1
        if self.uniform:
            return self.rng.choice(ok)
        return self.rng.choices(ok, [self.weights[j] for j in ok])[0]


class LeastRequest(Balancer):
    """Power of two random choices by in-flight count (Envoy's least_request default)."""

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        n = self.n
        if n == 0:
            return -1
        rng = self.rng
        if n > 1:
            a = rng.randrange(n)
            b = rng.randrange(n - 1)
            if b >= a:
                b += 1
            if a != exclude and b != exclude and self.ok(a, panic) and self.ok(b, panic):
                return a if self.backends[a].in_flight <= self.backends[b].in_flight else b
        ok = self.candidates(exclude, panic)
        if not ok:
            return -1
        if len(ok) == 1:
            return ok[0]
        a, b = rng.sample(ok, 2)
        return a if self.backends[a].in_flight <= self.backends[b].in_flight else b


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashKey:
    """Where `hash_on` takes the key from: ip, header:<name>, cookie:<name>, claim:<name>.

    A request without that header/cookie/claim falls back to its client IP."""

    __slots__ = ("kind", "name", "bname")

    def __init__(self, spec: str | None) -> None:
        kind, _, name = (spec or "ip").partition(":")
        self.kind = kind
        self.name = name
        self.bname = name.lower().encode("latin-1")

    def __call__(self, scope: Scope) -> str:
        kind = self.kind
        value: str | None = None
        if kind == "header":
            for k, v in scope["headers"]:
                if k == self.bname:
                    value = v.decode("latin-1")
                    break
        elif kind == "cookie":
            value = _cookie(scope, self.name)
        elif kind == "claim":
            user = scope.get("kairos.user") or {}
            claim = user.get(self.name) if isinstance(user, dict) else None
            if claim is not None:
                value = str(claim)
        if value:
            return value
        ip = scope.get("kairos.client_ip")
        if ip:
            return str(ip)
        client = scope.get("client")
        return client[0] if client else ""


def _cookie(scope: Scope, name: str) -> str | None:
    for k, v in scope["headers"]:
        if k == b"cookie":
            for part in v.decode("latin-1").split(";"):
                key, sep, val = part.strip().partition("=")
                if sep and key == name:
                    return val
    return None


class ConsistentHash(Balancer):
    """ip_hash: a hash ring with virtual nodes (160 per unit of weight, placed by address).

    Removing one backend of n moves only the keys that were on it (about 1/n);
    an unavailable backend's keys go to the next backend clockwise, and come
    back when it does."""

    def __init__(self, backends: Sequence[Backend], weights: Sequence[int], **kw) -> None:
        super().__init__(backends, weights, **kw)
        self.key = HashKey(kw.get("hash_on"))
        points: list[tuple[int, int]] = []
        for i, backend in enumerate(self.backends):
            for v in range(VNODES_PER_WEIGHT * self.weights[i]):
                points.append((_hash64(f"{backend.address}#{v}".encode()), i))
        points.sort()
        self.points = [p for p, _ in points]
        self.owners = [i for _, i in points]

    def index_for(self, key: str) -> int:
        """The ring's owner of `key`, ignoring availability (for tests and tooling)."""
        pos = bisect_left(self.points, _hash64(key.encode()))
        return self.owners[pos % len(self.owners)]

    def choose(self, scope: Scope, exclude: int, panic: bool) -> int:
        owners = self.owners
        m = len(owners)
        if not m:
            return -1
        pos = bisect_left(self.points, _hash64(self.key(scope).encode()))
        seen = 0
        tried = 0
        for k in range(m):
            i = owners[(pos + k) % m]
            bit = 1 << i
            if seen & bit:
                continue
            seen |= bit
            if i != exclude and self.ok(i, panic):
                return i
            tried += 1
            if tried >= self.n:
                break
        return -1


STRATEGY_CLASSES: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "weighted": SmoothWeighted,
    "least_connections": LeastConnections,
    "random": Random,
    "least_request": LeastRequest,
    "ip_hash": ConsistentHash,
}


def make_balancer(strategy: str, backends: Sequence[Backend], weights: Sequence[int], **kw) -> Balancer:
    """The balancer for `strategy`; keyword options: breakers, panic, hash_on, clock, rng."""
    return STRATEGY_CLASSES.get(strategy, RoundRobin)(backends, weights, **kw)
