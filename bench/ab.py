"""Same-run A/B of this checkout against another one (e.g. the previous main in a worktree).

    git worktree add ../house-base 91b00b0
    python bench/ab.py --base ../house-base [--duration 5] [--repeat 3] [--rounds 4]

Two measurements, each interleaved (A, B, A, B, ...) so a slow phase of a shared machine
hits both sides:
  * in process: `bench/layers.py --stack` (the whole proxied path, upstream answered from
    memory) run `--rounds` times per side in fresh processes, pinned to core 0;
  * through sockets: both gateways (`python -m kairos serve`, each from its own checkout,
    pinned to core 0) behind the same nginx upstream, wrk -t1 -c64 on core 1, `--repeat`
    runs each (bench/run.py's `interleaved`, median kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import NGINX_UPSTREAM, free_port, gateway_config, interleaved, nginx, pinned, process  # noqa: E402


@contextmanager
def gateway(repo: Path, tmp: Path, name: str, upstream: int) -> Iterator[int]:
    """`python -m kairos serve` from `repo` (cwd and PYTHONPATH: that checkout's code, not the installed one)."""
    port = free_port()
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(gateway_config(upstream)))
    argv = pinned(0, [sys.executable, "-m", "kairos", "serve", "--config", str(config), "--host", "127.0.0.1",
                      "--port", str(port)])
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        with process(argv, port, tmp / f"{name}.log", {"PYTHONPATH": str(repo)}):
            os.chdir(cwd)
            yield port
    finally:
        os.chdir(cwd)


def stack_run(repo: Path) -> dict[str, float]:
    argv = pinned(0, [sys.executable, str(ROOT / "bench" / "layers.py"), "--stack", "--repo", str(repo)])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True, cwd=repo).stdout
    result = {}
    for line in out.splitlines():
        name, _, value = line.rpartition(" ")
        if value == "µs/request":
            name, _, number = name.rpartition(" ")
            result[name.strip()] = float(number)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the other checkout (B)")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    sides = {"base": Path(args.base).resolve(), "this": ROOT}

    stack: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, repo in sides.items():
            stack[side].append(stack_run(repo))
    print("in process, µs per proxied request (min / median of", args.rounds, "interleaved runs):")
    for case in stack["this"][0]:
        cells = []
        for side in sides:
            values = [run[case] for run in stack[side] if case in run]
            # A case the other checkout cannot configure (a feature it does not have) is n/a there.
            cells.append(f"{side} {min(values):6.2f} / {statistics.median(values):6.2f}" if values else f"{side}    n/a")
        print(f"  {case:44s} " + "   ".join(cells))

    with tempfile.TemporaryDirectory(prefix="kairos-ab-") as d, ExitStack() as stack_:
        tmp = Path(d)
        argv, up = nginx(tmp, "upstream", NGINX_UPSTREAM)
        stack_.enter_context(process(pinned(1, argv), up, tmp / "upstream.log"))
        ports = {side: stack_.enter_context(gateway(repo, tmp, side, up)) for side, repo in sides.items()}
        res = interleaved({side: (port, None) for side, port in ports.items()}, args)
    print("through sockets (wrk -t1 -c64, median of interleaved runs):")
    for side, r in res.items():
        print(f"  {side:5s} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
              f"errors {r['errors'] + r['non_2xx']}  runs {r['runs_rps']}")


if __name__ == "__main__":
    main()
