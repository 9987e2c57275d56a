"""Unit tests (fake clock, no sleeps, no network) for the resilience state machines and balancers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kairos.config.models import (
    BackendConfig,
    CircuitBreakerConfig,
    HealthCheckConfig,
    OutlierDetectionConfig,
    RetryConfig,
)
from kairos.upstream.balancer import ConsistentHash, HashKey, make_balancer
from kairos.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from kairos.upstream.backend import Backend
from kairos.upstream.health import HealthState
from kairos.upstream.outlier import OutlierDetector
from kairos.upstream.retry import IDEMPOTENT_METHODS, RetryBudget, RetryPolicy, backoff_delay


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


_port = iter(range(20000, 30000))


def backends(n: int) -> list[Backend]:
    return [Backend(BackendConfig(host="http://127.0.0.1", port=next(_port))) for _ in range(n)]


def scope(ip: str = "10.0.0.1", headers=()) -> dict:
    return {"headers": list(headers), "kairos.client_ip": ip, "client": (ip, 1234)}


# ---------------------------------------------------------------------------- breaker
def breaker(clock, **kw) -> CircuitBreaker:
    return CircuitBreaker("b", CircuitBreakerConfig(**kw), clock=clock, metrics=False)


def test_breaker_opens_after_consecutive_failures_only():
    clock = FakeClock()
    br = breaker(clock, failure_threshold=3)
    for _ in range(2):
        br.failure(br.acquire())
    br.success(br.acquire())  # resets the streak
    for _ in range(2):
        br.failure(br.acquire())
    assert br.state == CLOSED
    br.failure(br.acquire())
    assert br.state == OPEN
    assert not br.can_pass()


def test_breaker_half_open_probe_limit_and_close():
    clock = FakeClock()
    br = breaker(clock, failure_threshold=1, success_threshold=2, reset_timeout_ms=1000, half_open_max_requests=2)
    br.failure(br.acquire())
    assert br.state == OPEN
    clock.advance(0.999)
    assert not br.can_pass()
    assert br.retry_after_s() == pytest.approx(0.001)
    clock.advance(0.001)
    assert br.can_pass() and br.state == HALF_OPEN
    g1 = br.acquire()
    assert br.can_pass()
    g2 = br.acquire()
    assert not br.can_pass()  # two probes in flight: the limit
    br.success(g1)
    assert br.state == HALF_OPEN and br.can_pass()
    br.success(g2)
    assert br.state == CLOSED


def test_breaker_half_open_failure_reopens_and_release_frees_slot():
    clock = FakeClock()
    br = breaker(clock, failure_threshold=1, reset_timeout_ms=500)
    br.failure(br.acquire())
    clock.advance(0.5)
    assert br.can_pass()
    g = br.acquire()
    assert not br.can_pass()
    br.release(g)  # client went away: slot back, no verdict
    assert br.can_pass() and br.state == HALF_OPEN
    g = br.acquire()
    br.failure(g)
    assert br.state == OPEN and not br.can_pass()


def test_breaker_ignores_results_from_an_older_generation():
    clock = FakeClock()
    br = breaker(clock, failure_threshold=1, success_threshold=1, reset_timeout_ms=100)
    stale = br.acquire()  # a slow request started while closed
    br.failure(br.acquire())
    clock.advance(0.1)
    assert br.can_pass()
    probe = br.acquire()
    br.success(stale)  # must not count as the probe's success
    assert br.state == HALF_OPEN
    br.success(probe)
    assert br.state == CLOSED


def test_breaker_status_codes():
    br = breaker(FakeClock(), failure_threshold=2, failure_status_codes=[503])
    br.record_status(br.acquire(), 500)  # not a failure status here
    br.record_status(br.acquire(), 503)
    br.record_status(br.acquire(), 503)
    assert br.state == OPEN


# ---------------------------------------------------------------------------- balancers
def names(bs, picks):
    idx = {b: "abcdefgh"[i] for i, b in enumerate(bs)}
    return "".join(idx[p] for p in picks)


def test_round_robin_exact_rotation_skipping_unavailable():
    bs = backends(3)
    lb = make_balancer("round_robin", bs, [1, 1, 1])
    assert names(bs, [lb.pick(scope()) for _ in range(6)]) == "abcabc"
    bs[1].healthy = False
    bs[1].update_available()
    assert names(bs, [lb.pick(scope()) for _ in range(4)]) == "acac"


def test_smooth_weighted_is_nginx_sequence():
    bs = backends(3)
    lb = make_balancer("weighted", bs, [5, 1, 1])
    seq = names(bs, [lb.pick(scope()) for _ in range(7)])
    assert seq == "aabacaa"
    counts = Counter(names(bs, [lb.pick(scope()) for _ in range(700)]))
    assert counts == {"a": 500, "b": 100, "c": 100}


def test_least_connections_prefers_idle_and_rotates_ties():
    bs = backends(3)
    lb = make_balancer("least_connections", bs, [1, 1, 1])
    bs[0].in_flight = 2
    bs[1].in_flight = 0
    bs[2].in_flight = 1
    assert lb.pick(scope()) is bs[1]
    for b in bs:
        b.in_flight = 0
    assert {lb.pick(scope()) for _ in range(3)} == set(bs)


def test_least_request_p2c_never_picks_the_busiest_of_two():
    bs = backends(2)
    lb = make_balancer("least_request", bs, [1, 1], rng=random.Random(1))
    bs[0].in_flight = 5
    assert all(lb.pick(scope()) is bs[1] for _ in range(50))


def test_random_spreads_and_respects_weights():
    bs = backends(2)
    lb = make_balancer("random", bs, [3, 1], rng=random.Random(7))
    c = Counter(lb.pick(scope()) for _ in range(4000))
    assert 2700 < c[bs[0]] < 3300


def test_all_strategies_skip_unavailable_and_open_breakers():
    clock = FakeClock()
    for strategy in ("round_robin", "weighted", "least_connections", "random", "least_request", "ip_hash"):
        bs = backends(3)
        brs = [breaker(clock, failure_threshold=1) for _ in bs]
        lb = make_balancer(strategy, bs, [1, 1, 1], breakers=brs, rng=random.Random(3))
        bs[0].healthy = False
        bs[0].update_available()
        brs[1].failure(brs[1].acquire())
        for k in range(30):
            assert lb.pick(scope(f"10.0.0.{k}")) is bs[2], strategy
        brs[2].failure(brs[2].acquire())
        assert lb.pick(scope()) is None, strategy


def test_panic_mode_ignores_health_but_not_breakers():
    bs = backends(2)
    for b in bs:
        b.healthy = False
        b.update_available()
    lb = make_balancer("round_robin", bs, [1, 1], panic=True)
    assert lb.pick(scope()) is not None
    assert make_balancer("round_robin", bs, [1, 1]).pick(scope()) is None


def test_exclude_picks_another_backend_when_possible():
    bs = backends(2)
    lb = make_balancer("ip_hash", bs, [1, 1])
    first = lb.pick_index(scope())
    assert lb.pick_index(scope(), exclude=first) == 1 - first
    one = backends(1)
    assert make_balancer("round_robin", one, [1]).pick_index(scope(), exclude=0) == 0


def test_consistent_hash_remaps_about_one_nth():
    bs = backends(5)
    full = ConsistentHash(bs, [1] * 5)
    smaller = ConsistentHash(bs[:4], [1] * 4)
    keys = [f"10.{i // 250}.{i % 250}.7" for i in range(5000)]
    moved = 0
    for k in keys:
        before = bs[full.index_for(k)]
        after = bs[:4][smaller.index_for(k)]
        if before is not bs[4]:
            assert after is before  # only the removed backend's keys move
        else:
            moved += 1
    assert 0.12 < moved / len(keys) < 0.28  # ~1/5


def test_consistent_hash_unavailable_backend_keys_fail_over_and_come_back():
    bs = backends(3)
    lb = ConsistentHash(bs, [1, 1, 1])
    keys = [f"192.168.1.{i}" for i in range(200)]
    before = {k: lb.pick(scope(k)) for k in keys}
    bs[0].healthy = False
    bs[0].update_available()
    during = {k: lb.pick(scope(k)) for k in keys}
    assert all(during[k] is before[k] for k in keys if before[k] is not bs[0])
    assert all(during[k] is not bs[0] for k in keys)
    bs[0].healthy = True
    bs[0].update_available()
    assert {k: lb.pick(scope(k)) for k in keys} == before


def test_hash_key_sources():
    s = {
        "headers": [(b"x-tenant", b"acme"), (b"cookie", b"a=1; session=xyz; b=2")],
        "kairos.client_ip": "1.2.3.4",
        "kairos.user": {"sub": "alice"},
    }
    assert HashKey("ip")(s) == "1.2.3.4"
    assert HashKey("header:X-Tenant")(s) == "acme"
    assert HashKey("cookie:session")(s) == "xyz"
    assert HashKey("claim:sub")(s) == "alice"
    assert HashKey("claim:missing")(s) == "1.2.3.4"  # falls back to the client IP
    assert HashKey("cookie:nope")(s) == "1.2.3.4"


# ---------------------------------------------------------------------------- outlier detection
def test_ejection_doubles_and_caps_and_returns():
    clock = FakeClock()
    bs = backends(2)
    od = OutlierDetector(
        OutlierDetectionConfig(consecutive_failures=3, base_ejection_ms=1000, max_ejection_ms=3000), bs, clock
    )
    lb = make_balancer("round_robin", bs, [1, 1], clock=clock)
    expected = [1.0, 2.0, 3.0, 3.0]  # doubled, then capped
    for duration in expected:
        od.failure(bs[0])
        od.success(bs[0])  # a success resets the streak
        for _ in range(3):
            od.failure(bs[0])
        assert not bs[0].available
        assert bs[0].ejected_until == pytest.approx(clock() + duration)
        assert all(lb.pick(scope()) is bs[1] for _ in range(4))
        clock.advance(duration - 0.01)
        assert not any(lb.pick(scope()) is bs[0] for _ in range(4))
        clock.advance(0.01)
        assert bs[0] in {lb.pick(scope()) for _ in range(2)}
        assert bs[0].available
    # In service for max_ejection_ms: the next ejection starts from the base again.
    clock.advance(3.0)
    for _ in range(3):
        od.failure(bs[0])
    assert bs[0].ejected_until == pytest.approx(clock() + 1.0)


def test_max_ejection_percent_but_one_always_allowed():
    clock = FakeClock()
    bs = backends(4)
    od = OutlierDetector(OutlierDetectionConfig(consecutive_failures=1, max_ejection_percent=10), bs, clock)
    od.failure(bs[0])
    assert bs[0].ejected_until  # 1 of 4 = 25% > 10%, but one can always be ejected
    od.failure(bs[1])
    assert not bs[1].ejected_until
    od2 = OutlierDetector(OutlierDetectionConfig(consecutive_failures=1, max_ejection_percent=50), bs, clock)
    od2.failure(bs[1])
    assert bs[1].ejected_until  # 2 of 4 = 50%
    od2.failure(bs[2])
    assert not bs[2].ejected_until


# ---------------------------------------------------------------------------- health thresholds
def test_health_thresholds():
    b = backends(1)[0]
    st = HealthState(b, HealthCheckConfig(unhealthy_threshold=3, healthy_threshold=2))
    assert st.record(False) is None and st.record(False) is None
    st.record(True)  # breaks the streak
    assert st.record(False) is None and st.record(False) is None
    assert st.record(False) is False
    assert not b.available
    assert st.record(True) is None
    assert st.record(True) is True
    assert b.available


def test_expected_status_ranges():
    cfg = HealthCheckConfig(expected_statuses=[204, "200-299"])
    assert cfg.status_ranges() == ((204, 204), (200, 299))


# ---------------------------------------------------------------------------- retry
def test_backoff_without_jitter_is_exponential_and_capped():
    delays = [backoff_delay(n, 0.1, 2.0, 1.0, False) for n in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff_delay(5000, 0.1, 2.0, 1.0, False) == 1.0


def test_full_jitter_bounds():
    rng = random.Random(5)
    for n in range(8):
        cap = min(0.1 * 2**n, 1.0)
        for _ in range(50):
            d = backoff_delay(n, 0.1, 2.0, 1.0, True, rng.random)
            assert 0.0 <= d <= cap
    assert backoff_delay(3, 0.1, 2.0, 5.0, True, lambda: 0.5) == pytest.approx(0.4)


def test_retry_budget():
    budget = RetryBudget(budget_percent=20, min_retry_concurrency=2)
    budget.requests = 10
    assert budget.try_acquire() and budget.try_acquire()  # the floor
    assert not budget.try_acquire()  # 20% of 10 = 2
    budget.requests = 20
    assert budget.try_acquire()  # 3 <= 4
    assert budget.try_acquire()
    assert not budget.try_acquire()
    budget.release()
    assert budget.try_acquire()
    lone = RetryBudget(budget_percent=20, min_retry_concurrency=3)
    lone.requests = 1
    assert lone.try_acquire()  # a lone request still gets its retry


def test_retry_policy_methods():
    p = RetryPolicy(RetryConfig(), "/r")
    assert p.may_retry_method("GET") and p.may_retry_method("PUT")
    assert not p.may_retry_method("POST") and not p.may_retry_method("PATCH")
    assert RetryPolicy(RetryConfig(retry_non_idempotent=True), "/r").may_retry_method("POST")
    assert "POST" not in IDEMPOTENT_METHODS
