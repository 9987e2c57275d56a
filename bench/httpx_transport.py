"""The upstream client three ways, in process and interleaved: python bench/httpx_transport.py

Against a one-worker nginx returning 60 bytes of JSON (pinned to core 1; this
process to core 0), 64 concurrent keep-alive requests at a time:

  direct      UpstreamClient.request() -> read body -> release (the proxy's path)
  transport   httpx.AsyncClient(transport=UpstreamTransport) .get() + .aread()
  httpcore    httpx.AsyncClient() with its default transport, limits raised to 64

Rounds alternate the three so a noisy neighbour hurts them alike; the medians
are printed (requests/s) with each one's share of the direct path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# KAIROS_ROOT: measure another checkout's kairos (an A/B against main's worktree).
sys.path.insert(0, os.environ.get("KAIROS_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402

from bench.run import NGINX_UPSTREAM, nginx, pinned, process  # noqa: E402
from kairos.upstream.client import UpstreamClient  # noqa: E402

CONCURRENCY = 64


async def drive(one, n: int) -> float:
    """Requests/s for n requests, CONCURRENCY at a time."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - t)


async def measure(port: int, n: int, rounds: int, only: list[str] | None = None) -> dict[str, list[float]]:
    client = UpstreamClient()
    await client.start()
    url = f"http://127.0.0.1:{port}/api/users/42"
    headers = [(b"host", b"127.0.0.1"), (b"accept", b"*/*")]

    async def direct() -> None:
        r = await client.request("http", "127.0.0.1", port, "GET", "/api/users/42", headers, None, 5.0)
        try:
            while await r.read():
                pass
        finally:
            r.release()

    over_pool = client.http

    async def transport() -> None:
        r = await over_pool.get(url)
        await r.aread()

    default = httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY), trust_env=False)

    async def httpcore() -> None:
        r = await default.get(url)
        await r.aread()

    modes = {"direct": direct, "transport": transport, "httpcore": httpcore}
    modes = {k: v for k, v in modes.items() if not only or k in only}
    results: dict[str, list[float]] = {m: [] for m in modes}
    for one in modes.values():  # warm-up: connections open, code paths hot
        await drive(one, 2000)
    for _ in range(rounds):
        for name, one in modes.items():
            # httpcore is ~10x slower: fewer requests keep its rounds as long as the others'.
            results[name].append(await drive(one, n // 8 if name == "httpcore" else n))
    await default.aclose()
    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20000, help="requests per round and mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated modes (default: all three)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        argv, port = nginx(Path(tmp), "upstream", NGINX_UPSTREAM)
        with process(pinned(1, argv), port, Path(tmp) / "nginx.log"):
            results = asyncio.run(measure(port, args.n, args.rounds, [m for m in args.only.split(",") if m]))
    base = statistics.median(next(iter(results.values())))
    print(f"{'mode':<10} {'median req/s':>13} {'vs direct':>10}   rounds")
    for name, values in results.items():
        med = statistics.median(values)
        rounds = " ".join(f"{v:,.0f}" for v in values)
        print(f"{name:<10} {med:>13,.0f} {med / base:>9.0%}   {rounds}")


if __name__ == "__main__":
    main()
