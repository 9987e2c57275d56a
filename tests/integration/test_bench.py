"""The benchmark suite's own plumbing: it runs and reads its tools' output (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.openloop import run as openloop_run
from bench.run import parse_wrk
from tests.conftest import REPO_ROOT

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:18083/api/users/42
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.32ms    8.01ms  98.12ms   80.12%
    Req/Sec     4.24k   312.55     4.80k    71.00%
  Latency Distribution
     50%   13.82ms
     75%   17.01ms
     90%   22.40ms
     99%   55.02ms
  42196 requests in 10.00s, 8.41MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   4219.61
Transfer/sec:    861.06KB
"""


def test_parse_wrk_reads_throughput_latency_and_errors():
    r = parse_wrk(WRK_OUTPUT)
    assert r["rps"] == 4219.61
    assert r["p50_ms"] == 13.82 and r["p99_ms"] == 55.02 and r["p90_ms"] == 22.4
    assert r["requests"] == 42196
    assert r["errors"] == 5
    assert r["non_2xx"] == 7


def test_parse_wrk_units():
    out = WRK_OUTPUT.replace("13.82ms", "721.00us").replace("55.02ms", "1.20s")
    r = parse_wrk(out)
    assert r["p50_ms"] == 0.721 and r["p99_ms"] == 1200.0


def test_parse_wrk_refuses_output_without_a_result():
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


async def test_openloop_sends_the_scheduled_number_of_requests(upstream):
    result = await openloop_run(upstream.url + "/echo", rate=200, duration=0.5)
    assert result["sent"] == 100
    assert result["ok"] == 100 and result["errors"] == 0
    assert result["statuses"] == {200: 100}
    assert upstream.count == 100
    assert result["p50_ms"] <= result["p99_ms"] <= result["p999_ms"]


def test_route_lookup_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "lookup.json"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "route_lookup.py"), "--sizes", "20,200", "--seconds", "0.05", "--json", str(out)],
        check=True, capture_output=True, timeout=120, cwd=REPO_ROOT,
    )
    data = json.loads(out.read_text())
    assert set(data["kairos"]) == {"20", "200"}
    assert all(v > 0 for v in data["kairos"].values())
    assert set(data["starlette"]) == {"20", "200"}


def test_parse_layers():
    from bench.run import parse_layers

    out = parse_layers("no-op app alone: 1.07 µs/request\nsecurity headers (global)          + 0.84 µs/request\n"
                       "rate limit, memory, FixedWindow    + 2.38 µs/request\n")
    assert out["noop_us"] == 1.07
    assert out["added_us"] == {"security headers (global)": 0.84, "rate limit, memory, FixedWindow": 2.38}
