"""WebSocket echo messages per second: through kairos, against the upstream directly, as a ratio.

    python bench/websocket_echo.py [--clients 32] [--duration 5] [--size 64] [--repeat 3]

A `websockets` echo server (its own process, pinned to core 1 with the load
generator when the machine has 2+ cores) and `kairos serve` with one websocket
route (pinned to core 0). Each client sends a message and waits for its echo,
in a loop; the figure is echoes completed per second over all clients. Runs
alternate direct / through kairos `--repeat` times; medians are kept. Writes
bench/results/websocket.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

ECHO_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None, ping_interval=None):
        await asyncio.Future()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core: int, argv: list[str]) -> list[str]:
    if len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


async def load(url: str, clients: int, duration: float, size: int) -> float:
    from websockets.asyncio.client import connect

    payload = "x" * size
    done = 0
    stop = time.monotonic() + duration

    async def one() -> None:
        nonlocal done
        async with connect(url, proxy=None, compression=None, ping_interval=None) as ws:
            while time.monotonic() < stop:
                await ws.send(payload)
                await ws.recv()
                done += 1

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.monotonic() - start)


def measure(url: str, args: argparse.Namespace) -> float:
    # The load generator is pinned with the upstream (core 1), away from the gateway.
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {1})
    return asyncio.run(load(url, args.clients, args.duration, args.size))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    upstream_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "routers": [{
                "external_path": "/echo", "internal_path": "/", "methods": ["GET"], "protocol": "websocket",
                "backends": [{"host": "ws://127.0.0.1", "port": upstream_port}],
            }],
            "logging": {"level": "warning", "access_log": False},
        }
        path = Path(tmp) / "ws-bench.json"
        path.write_text(json.dumps(config))
        try:
            procs.append(subprocess.Popen(pinned(1, [sys.executable, "-c", ECHO_SERVER, str(upstream_port)]), env=env))
            procs.append(subprocess.Popen(
                pinned(0, [sys.executable, "-m", "kairos", "serve", "--config", str(path), "--host", "127.0.0.1",
                           "--port", str(gateway_port)]),
                env=env, stdout=subprocess.DEVNULL,
            ))
            wait_port(upstream_port)
            wait_port(gateway_port)
            direct, through = [], []
            for _ in range(args.repeat):
                direct.append(measure(f"ws://127.0.0.1:{upstream_port}/", args))
                through.append(measure(f"ws://127.0.0.1:{gateway_port}/echo", args))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)
    result = {
        "what": f"echo round trips/s, {args.clients} clients, {args.size}-byte text messages, {args.duration:g} s x {args.repeat}",
        "direct_per_s": round(statistics.median(direct)),
        "kairos_per_s": round(statistics.median(through)),
        "ratio": round(statistics.median(through) / statistics.median(direct), 3),
        "runs": {"direct": [round(x) for x in direct], "kairos": [round(x) for x in through]},
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "websocket.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"websocket echo: direct {result['direct_per_s']:,}/s, through kairos {result['kairos_per_s']:,}/s, "
          f"ratio {result['ratio']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
