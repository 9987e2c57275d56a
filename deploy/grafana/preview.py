"""Render the Grafana dashboard's panels from a real Prometheus, for the docs' picture.

    python deploy/grafana/preview.py --prometheus http://127.0.0.1:9090 --out docs/images/dashboard.png

Grafana itself does not run on the machines this project is built on (no package in PyPI, npm or
Debian), so this draws each panel of `kairos-dashboard.json` in the dashboard's own grid with
matplotlib, from the panel's own PromQL evaluated by Prometheus over the last `--minutes`. It is a
faithful preview of the data and layout, not of Grafana's styling. `docs/deploy/observability.md`
says how the shipped picture was made.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

DASHBOARD = Path(__file__).with_name("kairos-dashboard.json")


def fill(expr: str, step_s: int) -> str:
    """The dashboard's variables as Grafana fills them with "All" selected."""
    return expr.replace("$__rate_interval", f"{4 * step_s}s").replace("$job", ".*").replace("$route", ".*")


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prometheus", default="http://127.0.0.1:9090")
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--step", type=int, default=2, help="seconds between points")
    p.add_argument("--out", default="docs/images/grafana-dashboard-preview.png")
    args = p.parse_args()

    dashboard = json.loads(DASHBOARD.read_text())
    panels = [q for q in dashboard["panels"] if q["type"] != "row"]
    rows = max(q["gridPos"]["y"] + q["gridPos"]["h"] for q in panels)
    fig = plt.figure(figsize=(20, rows * 0.42), dpi=90)
    grid = fig.add_gridspec(rows, 24, hspace=1.6, wspace=0.6, top=0.97)
    end = time.time()
    start = end - args.minutes * 60
    with httpx.Client(timeout=10, trust_env=False) as client:
        for panel in panels:
            g = panel["gridPos"]
            ax = fig.add_subplot(grid[g["y"]: g["y"] + g["h"] - 1, g["x"]: g["x"] + g["w"]])
            ax.set_title(panel["title"], fontsize=9, loc="left")
            ax.tick_params(labelsize=7)
            for target in panel["targets"]:
                body = client.get(args.prometheus + "/api/v1/query_range", params={
                    "query": fill(target["expr"], args.step), "start": start, "end": end, "step": args.step,
                }).json()
                if body["status"] != "success":
                    raise SystemExit(f"{panel['title']}: {body}")
                for series in body["data"]["result"]:
                    legend = target.get("legendFormat", "")
                    for key, value in series["metric"].items():
                        legend = legend.replace("{{" + key + "}}", value)
                    xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    ax.plot(xs, ys, linewidth=1, label=legend[:48])
            if ax.lines:
                ax.legend(fontsize=6, loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xlabel("minutes", fontsize=7)
    fig.suptitle(f"{dashboard['title']} (preview from Prometheus; Grafana renders the same queries)", fontsize=12, y=0.99)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight")
    print(args.out)


if __name__ == "__main__":
    main()
