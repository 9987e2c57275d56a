"""Plot bench/results/latest.json: requests/s and p99 per configuration (docs/performance.png)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def runs(results: dict) -> list[tuple[str, dict]]:
    s = results["sections"]
    out = []
    if "proxy" in s:
        out += [("upstream direct", s["proxy"]["direct"]), ("nginx proxy", s["proxy"]["nginx"]), ("kairos", s["proxy"]["kairos"])]
    if "routes" in s:
        out += [("kairos 20 routes", s["routes"]["proxy_20_routes"]), ("kairos 20k routes", s["routes"]["proxy_20000_routes"])]
    if "features" in s:
        labels = {
            "jwt_repeated_token": "JWT (same token)",
            "jwt_fresh_tokens": "JWT (fresh tokens)",
            "ratelimit_memory": "rate limit (memory)",
            "ratelimit_redis": "rate limit (Redis)",
        }
        out += [(f"kairos + {label}", s["features"][k]) for k, label in labels.items() if k in s["features"]]
    if "conns" in s:
        out.append(("kairos 2,000 conns", s["conns"]["kairos_2000"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.png"))
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    data = runs(results)
    names = [n for n, _ in data]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 1.8))
    ax1.barh(names, [r["rps"] for _, r in data], color="#3b7dd8")
    ax1.set_xlabel("requests/s (wrk -t1, one worker)")
    ax1.invert_yaxis()
    ax2.barh(names, [r.get("p99_ms", 0) for _, r in data], color="#d8763b")
    ax2.set_xlabel("p99 latency (ms)")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    m = results["machine"]
    fig.suptitle(f"kairos vs nginx, {m['cores']} cores, {m['cpu']}, {m['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
