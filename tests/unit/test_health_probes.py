"""Active health probes against respx (no sockets): what a probe sends, how answers and
failures count, and the supervisor keeping or restarting loops across a reload."""

from __future__ import annotations

import asyncio

import httpx
import respx

from kairos.config.models import BackendConfig, HealthCheckConfig
from kairos.upstream.backend import Backend
from kairos.upstream.health import HealthChecker, HealthSpec, HealthSupervisor


def backend(port: int = 8081) -> Backend:
    return Backend(BackendConfig(host="http://backend.test", port=port))


def spec(b: Backend, **cfg) -> HealthSpec:
    return HealthSpec(b, "/healthz", HealthCheckConfig(**cfg))


async def test_a_probe_is_a_get_on_the_backend_with_its_host_header():
    b = backend()
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get("http://backend.test:8081/healthz").respond(204)
        async with httpx.AsyncClient() as http:
            ok, detail = await HealthChecker(spec(b), http).probe()
    assert (ok, detail) == (True, "204")
    request = route.calls.last.request
    assert request.headers["host"] == "backend.test:8081"
    assert request.headers["user-agent"] == "kairos-health-check"


async def test_status_outside_the_expected_ranges_and_transport_errors_are_failures():
    b = backend()
    with respx.mock() as mock:
        mock.get("http://backend.test:8081/healthz").mock(
            side_effect=[httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(418), httpx.Response(200)]
        )
        async with httpx.AsyncClient() as http:
            checker = HealthChecker(spec(b, expected_statuses=["200-299", 418]), http)
            results = [await checker.probe() for _ in range(4)]
    assert [ok for ok, _ in results] == [False, False, True, True]
    assert results[0][1] == "status 503" and results[1][1].startswith("ConnectError")


async def test_thresholds_mark_a_backend_down_then_up_again():
    b = backend()
    answers = [503, 503, 200, 200]
    with respx.mock() as mock:
        mock.get("http://backend.test:8081/healthz").mock(side_effect=[httpx.Response(s) for s in answers])
        async with httpx.AsyncClient() as http:
            checker = HealthChecker(spec(b, unhealthy_threshold=2, healthy_threshold=2), http)
            seen = []
            for _ in answers:
                checker.state.record(*await checker.probe())
                seen.append(b.available)
    assert seen == [True, False, False, True]


async def test_the_supervisor_keeps_unchanged_loops_and_restarts_changed_ones():
    b = backend()
    probed = asyncio.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        probed.set()
        return httpx.Response(200)

    supervisor = HealthSupervisor()
    with respx.mock() as mock:
        mock.get("http://backend.test:8081/healthz").mock(side_effect=answer)
        async with httpx.AsyncClient() as http:
            supervisor.sync({b.address: spec(b, interval_ms=10_000)}, http)
            await asyncio.wait_for(probed.wait(), 5)  # the loop probes at once, then sleeps
            first = supervisor.tasks[b.address][1]
            supervisor.sync({b.address: spec(b, interval_ms=10_000)}, http)
            assert supervisor.tasks[b.address][1] is first  # same spec: same loop
            supervisor.sync({b.address: spec(b, interval_ms=5_000)}, http)
            assert supervisor.tasks[b.address][1] is not first  # changed: restarted
            await asyncio.sleep(0)
            assert first.cancelled() or first.done()
            supervisor.sync({}, http)
            assert supervisor.tasks == {}
            await supervisor.aclose()
