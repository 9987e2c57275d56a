"""`make bench`: kairos measured side by side with nginx, in one run, on this machine.

Prints a table and writes bench/results/latest.json. Every figure carries its
conditions. Sections (select with --only a,b,...):

  proxy     wrk -t1 -c64: the upstream directly, nginx as proxy, kairos (default features, JSON access log to a file)
  openloop  1,000 requests/s open-loop for 10 s: p50/p99/p99.9 through kairos and directly
  routes    the proxy run with 20 and with 20,000 routes; route lookups/s (kairos vs Starlette)
  features  JWT (repeated and fresh tokens), rate limiting (memory, Redis), transformation, as ratios to the plain proxy
  memory    RSS after 50,000 and 250,000 requests, and after 100 hot reloads
  conns     2,000 simultaneous keep-alive connections: errors and p99

Processes are pinned with taskset where the machine has 2+ cores: the gateway
(or nginx as proxy) on core 0, the load generator and the upstream on core 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BODY = '{"id":42,"name":"Grace Hopper","email":"grace@example.com"}'
PATH = "/api/users/42"
JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256-0123456789"


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cores() -> int:
    return len(os.sched_getaffinity(0))


def pinned(core: int, argv: list[str]) -> list[str]:
    if cores() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return argv


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextmanager
def process(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        wait_port(port)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


NGINX_UPSTREAM = """
worker_processes 1; daemon off; pid {tmp}/{name}.pid; error_log {tmp}/{name}.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 10000000;
  client_body_temp_path {tmp}/{name}-b; proxy_temp_path {tmp}/{name}-p; fastcgi_temp_path {tmp}/{name}-f;
  uwsgi_temp_path {tmp}/{name}-u; scgi_temp_path {tmp}/{name}-s;
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; return 200 '{body}'; }} }}
}}
"""

NGINX_PROXY = """
worker_processes 1; daemon off; pid {tmp}/{name}.pid; error_log {tmp}/{name}.err warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 10000000;
  client_body_temp_path {tmp}/{name}-b; proxy_temp_path {tmp}/{name}-p; fastcgi_temp_path {tmp}/{name}-f;
  uwsgi_temp_path {tmp}/{name}-u; scgi_temp_path {tmp}/{name}-s;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}
}}
"""


def nginx(tmp: Path, name: str, template: str, **values: Any) -> tuple[list[str], int]:
    port = free_port()
    conf = tmp / f"{name}.conf"
    conf.write_text(template.format(tmp=tmp, name=name, port=port, body=BODY, **values))
    return ["nginx", "-c", str(conf)], port


def gateway_config(upstream_port: int, routes: int = 1, **top: Any) -> dict[str, Any]:
    routers = [
        {
            "external_path": "/api/users/{id}",
            "internal_path": "/users/{id}",
            "methods": ["GET"],
            "host": "http://127.0.0.1",
            "port": upstream_port,
        }
    ]
    for i in range(routes - 1):
        routers.append(
            {
                "external_path": f"/svc{i}/items/{{id}}",
                "internal_path": f"/svc{i}/{{id}}",
                "methods": ["GET"],
                "host": "http://127.0.0.1",
                "port": upstream_port,
            }
        )
    return {"version": 1, "routers": routers, **top}


@contextmanager
def kairos(tmp: Path, config: dict[str, Any], name: str = "kairos", env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    argv = pinned(0, [sys.executable, "-m", "kairos", "serve", "--config", str(path), "--host", "127.0.0.1", "--port", str(port)])
    # The access log goes to a file, as a production deployment would ship it.
    with process(argv, port, tmp / f"{name}.log", env) as proc:
        yield proc, port


# --- load generators ---------------------------------------------------------------------------


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, latency percentiles and errors from `wrk --latency` output."""
    out: dict[str, Any] = {"errors": 0, "non_2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not m:
        raise ValueError("wrk printed no Requests/sec line:\n" + output)
    out["rps"] = float(m.group(1))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M):
        out[f"p{pct}_ms"] = round(_ms(value), 3)
    m = re.search(r"(\d+) requests in", output)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        out["non_2xx"] = int(m.group(1))
    return out


def wrk(port: int, connections: int = 64, duration: int = 10, path: str = PATH, script: Path | None = None) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}{path}")
    result = subprocess.run(pinned(1, argv), capture_output=True, text=True, timeout=duration + 60)
    data = parse_wrk(result.stdout)
    data["conditions"] = f"wrk -t1 -c{connections} -d{duration}s"
    return data


def interleaved(targets: dict[str, tuple[int, Path | None]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Measure each target `args.repeat` times, round-robin, and keep the median run of each.

    Interleaving spreads slow phases of a shared machine over every target instead of
    letting one of them take the whole hit; all runs' requests/s are kept in `runs_rps`.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for port, script in targets.values():
        wrk(port, duration=2, script=script)  # warm-up
    for _ in range(args.repeat):
        for name, (port, script) in targets.items():
            runs[name].append(wrk(port, duration=args.duration, script=script))
    out = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["rps"])
        median = dict(ordered[len(ordered) // 2])
        median["runs_rps"] = [r["rps"] for r in results]
        median["conditions"] += f", median of {len(results)} interleaved runs"
        out[name] = median
    return out


def openloop(port: int, rate: int, duration: int) -> dict[str, Any]:
    argv = [sys.executable, str(ROOT / "bench" / "openloop.py"), "--url", f"http://127.0.0.1:{port}{PATH}", "--rate", str(rate), "--duration", str(duration)]
    result = subprocess.run(pinned(1, argv), capture_output=True, text=True, timeout=duration + 60)
    data = json.loads(result.stdout)
    data["conditions"] = f"open loop {rate} req/s for {duration} s, latency from scheduled send time"
    return data


def rss_mib(pid: int) -> float:
    # The gateway runs under taskset: the python process is the child of nothing else (exec).
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


# --- sections ----------------------------------------------------------------------------------


def section_proxy(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    argv, nginx_port = nginx(tmp, "nginx-proxy", NGINX_PROXY, upstream=up)
    with process(pinned(0, argv), nginx_port, tmp / "nginx-proxy.log"), kairos(tmp, gateway_config(up)) as (_, port):
        res: dict[str, Any] = interleaved({"direct": (up, None), "nginx": (nginx_port, None), "kairos": (port, None)}, args)
    res["ratio_kairos_nginx"] = round(res["kairos"]["rps"] / res["nginx"]["rps"], 4)
    return res


def section_openloop(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    res = {"direct": openloop(up, args.rate, args.duration)}
    with kairos(tmp, gateway_config(up)) as (_, port):
        wrk(port, duration=2)
        res["kairos"] = openloop(port, args.rate, args.duration)
    res["p99_added_ms"] = round(res["kairos"]["p99_ms"] - res["direct"]["p99_ms"], 3)
    return res


def section_routes(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    with kairos(tmp, gateway_config(up, routes=20), name="kairos-20") as (_, p20), \
            kairos(tmp, gateway_config(up, routes=20000), name="kairos-20000") as (_, p20k):
        res: dict[str, Any] = interleaved({"proxy_20_routes": (p20, None), "proxy_20000_routes": (p20k, None)}, args)
    res["ratio_20000_vs_20"] = round(res["proxy_20000_routes"]["rps"] / res["proxy_20_routes"]["rps"], 4)
    out = tmp / "lookup.json"
    subprocess.run(pinned(0, [sys.executable, str(ROOT / "bench" / "route_lookup.py"), "--json", str(out)]), check=True, capture_output=True, timeout=600)
    res["lookups_per_s"] = json.loads(out.read_text())
    return res


def _tokens(n: int) -> list[str]:
    from jose import jwt

    now = int(time.time())
    return [
        jwt.encode({"sub": f"user{i}", "iat": now, "exp": now + 3600, "iss": "bench", "aud": "bench"}, JWT_SECRET, algorithm="HS256")
        for i in range(n)
    ]


def _token_script(tmp: Path, tokens: list[str]) -> Path:
    script = tmp / f"tokens{len(tokens)}.lua"
    lines = ",\n".join(f'"{t}"' for t in tokens)
    script.write_text(
        "local tokens = {\n" + lines + "\n}\nlocal i = 0\n"
        "request = function()\n  i = i % #tokens + 1\n"
        '  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[i]})\nend\n'
    )
    return script


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    argv = pinned(1, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)])
    with process(argv, port, tmp / "redis.log"):
        yield f"redis://127.0.0.1:{port}/0"


def section_features(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    jwt_cfg = {"secret": JWT_SECRET, "issuer": "bench", "audience": "bench"}
    jwt = gateway_config(up, jwt=jwt_cfg)
    jwt["routers"][0]["auth_required"] = True
    limit = {"strategy": "PerIP", "requests_per_window": 10**9, "window_duration": 60, "window_type": "FixedWindow"}
    one = _token_script(tmp, _tokens(1))
    fresh = _token_script(tmp, _tokens(20000))
    with contextlib.ExitStack() as stack:
        targets: dict[str, tuple[int, Path | None]] = {}
        _, port = stack.enter_context(kairos(tmp, gateway_config(up), name="plain"))
        targets["plain"] = (port, None)
        _, port = stack.enter_context(kairos(tmp, jwt, name="jwt"))
        targets["jwt_repeated_token"] = (port, one)
        targets["jwt_fresh_tokens"] = (port, fresh)
        _, port = stack.enter_context(kairos(tmp, gateway_config(up, rate_limit=limit), name="rl-memory"))
        targets["ratelimit_memory"] = (port, None)
        _, port = stack.enter_context(kairos(tmp, transform_config(up), name="transform"))
        targets["transform_5_headers_path"] = (port, None)
        # Every request after the first is a fresh hit: no upstream exchange at all (docs/caching.md).
        _, port = stack.enter_context(kairos(tmp, gateway_config(up, cache={"enabled": True, "ttl_secs": 3600}), name="cache"))
        targets["cache_hit_memory"] = (port, None)
        if shutil.which("redis-server"):
            url = stack.enter_context(redis_server(tmp))
            shared = dict(limit, enable_redis=True, redis_url=url)
            _, port = stack.enter_context(kairos(tmp, gateway_config(up, rate_limit=shared), name="rl-redis"))
            targets["ratelimit_redis"] = (port, None)
        res: dict[str, Any] = interleaved(targets, args)
    base = res["plain"]["rps"]
    res["ratios_to_plain"] = {k: round(v["rps"] / base, 4) for k, v in res.items() if k != "plain"}
    return res


def transform_config(up: int) -> dict[str, Any]:
    """The plain route with bench/layers.py's five header edits and a path rewrite (to the same upstream path)."""
    from layers import TRANSFORM  # bench/ is this script's directory

    config = gateway_config(up)
    config["routers"][0]["request_transformation"] = dict(
        TRANSFORM, path={"pattern": "^/api/users/(.+)$", "replacement": "/users/$1"})
    return config


def section_memory(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {}
    cfg = gateway_config(up)
    with kairos(tmp, cfg, name="memory") as (proc, port):
        pid = _python_pid(proc)
        done = 0
        for target in (50_000, 250_000):
            while done < target:
                r = wrk(port, duration=3)
                done += r["requests"] or 0
            res[f"rss_mib_after_{target}"] = rss_mib(pid)
            res[f"requests_at_{target}"] = done
        res["growth_50k_to_250k"] = round(res["rss_mib_after_250000"] / res["rss_mib_after_50000"] - 1, 4)
        before = rss_mib(pid)
        path = tmp / "memory.json"
        for i in range(100):
            cfg = gateway_config(up, routes=2 + i % 7)
            path.write_text(json.dumps(cfg))
            os.kill(pid, signal.SIGHUP)
            time.sleep(0.05)
        time.sleep(1)
        wrk(port, duration=2)
        res["rss_mib_before_reloads"] = before
        res["rss_mib_after_100_reloads"] = rss_mib(pid)
        res["growth_over_reloads"] = round(res["rss_mib_after_100_reloads"] / before - 1, 4)
        res["reload_log_lines"] = sum(1 for line in (tmp / "memory.log").read_text().splitlines() if '"reload' in line)
    return res


def section_conns(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    with kairos(tmp, gateway_config(up), name="conns") as (_, port):
        return {"kairos_2000": wrk(port, connections=2000, duration=args.duration)}


def section_layers(tmp: Path, up: int, args: argparse.Namespace) -> dict[str, Any]:
    """Per-layer cost in process (bench/layers.py): below wrk's run-to-run noise on a shared machine."""
    result = subprocess.run(pinned(0, [sys.executable, str(ROOT / "bench" / "layers.py")]), capture_output=True, text=True,
                            timeout=600, check=True)
    return parse_layers(result.stdout)


def parse_layers(output: str) -> dict[str, Any]:
    costs: dict[str, float] = {}
    base = None
    for line in output.splitlines():
        if line.startswith("no-op app alone:"):
            base = float(line.split(":")[1].split()[0])
        elif (m := re.match(r"^(.*?)\s+\+\s*([\d.]+) µs/request", line)):
            costs[m.group(1).strip()] = float(m.group(2))
    return {"noop_us": base, "added_us": costs, "conditions": "in process, no sockets, min of 3 x 200,000 calls"}


def _python_pid(proc: subprocess.Popen) -> int:
    """taskset execs its command, so the pid is the gateway's own."""
    return proc.pid


SECTIONS = {
    "proxy": section_proxy,
    "openloop": section_openloop,
    "routes": section_routes,
    "features": section_features,
    "memory": section_memory,
    "conns": section_conns,
    "layers": section_layers,
}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def ensure_tools() -> None:
    missing = [p for p, b in (("nginx", "nginx"), ("wrk", "wrk")) if not shutil.which(b)]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True)


def print_table(results: dict[str, Any]) -> None:
    rows = []

    def add(name: str, r: dict[str, Any] | None) -> None:
        if r and "rps" in r:
            rows.append((name, f"{r['rps']:,.0f}", f"{r.get('p50_ms', float('nan')):.2f}", f"{r.get('p99_ms', float('nan')):.2f}", str(r["errors"] + r["non_2xx"]), r["conditions"]))

    s = results["sections"]
    if "proxy" in s:
        for k in ("direct", "nginx", "kairos"):
            add(f"proxy/{k}", s["proxy"][k])
    if "routes" in s:
        add("routes/20", s["routes"]["proxy_20_routes"])
        add("routes/20000", s["routes"]["proxy_20000_routes"])
    if "features" in s:
        for k, v in s["features"].items():
            if isinstance(v, dict) and "rps" in v:
                add(f"features/{k}", v)
    if "conns" in s:
        add("conns/2000", s["conns"]["kairos_2000"])
    print(f"{'run':28} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  conditions")
    for row in rows:
        print(f"{row[0]:28} {row[1]:>10} {row[2]:>8} {row[3]:>8} {row[4]:>7}  {row[5]}")
    if "proxy" in s:
        print(f"\nkairos/nginx throughput: {s['proxy']['ratio_kairos_nginx']:.1%} (target >= 8%)")
    if "openloop" in s:
        o = s["openloop"]
        for k in ("direct", "kairos"):
            print(f"open loop {k:7}: p50 {o[k]['p50_ms']} ms  p99 {o[k]['p99_ms']} ms  p99.9 {o[k]['p999_ms']} ms  errors {o[k]['errors']}  ({o[k]['conditions']})")
        print(f"p99 added by kairos: {o['p99_added_ms']} ms (target < 2 ms, p99 < 5 ms)")
    if "routes" in s:
        r = s["routes"]
        print(f"20,000 vs 20 routes throughput: {r['ratio_20000_vs_20']:.1%} (target >= 90%)")
        lk = r["lookups_per_s"]
        for n in sorted(lk.get("kairos", {}), key=int):
            st = lk.get("starlette", {}).get(n)
            print(f"route lookups, {int(n):>6} routes: kairos {lk['kairos'][n]:,.0f}/s  starlette {st:,.0f}/s" if st else f"route lookups {n}: {lk['kairos'][n]:,.0f}/s")
    if "features" in s:
        for k, v in s["features"]["ratios_to_plain"].items():
            print(f"{k}: {v:.1%} of the plain proxy (target >= 85% for jwt_repeated_token and ratelimit_memory)")
    if "layers" in s:
        for name, us in s["layers"]["added_us"].items():
            print(f"layer {name:36s} +{us:.2f} µs/request ({s['layers']['conditions']})")
    if "memory" in s:
        m = s["memory"]
        print(f"RSS: {m['rss_mib_after_50000']} MiB after 50k, {m['rss_mib_after_250000']} MiB after 250k ({m['growth_50k_to_250k']:+.1%}); "
              f"{m['rss_mib_before_reloads']} -> {m['rss_mib_after_100_reloads']} MiB over 100 reloads ({m['growth_over_reloads']:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description="kairos benchmark suite (against nginx, same run)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--rate", type=int, default=1000, help="open-loop rate (default 1000/s)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per configuration; the median is kept (default 3)")
    parser.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    ensure_tools()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, Any] = {"machine": machine(), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="kairos-bench-") as d:
        tmp = Path(d)
        argv, up = nginx(tmp, "upstream", NGINX_UPSTREAM)
        with process(pinned(1, argv), up, tmp / "upstream.log"):
            for name in chosen:
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                results["sections"][name] = SECTIONS[name](tmp, up, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
