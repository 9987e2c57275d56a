"""The CLI's side of the admin API: `kairos status/routes/diff/apply/drain/undrain --admin URL`, and `kairos match`.

Exit codes (docs/cli.md):
    0 done (diff: no difference)       4 refused: bad/missing token, role, throttled (401/403/429)
    1 invalid config (local or 422)    5 conflict: the config changed meanwhile (412); read again
    2 usage error                      6 the admin API cannot be reached or answered unexpectedly
    3 not found / no route matched     7 apply not confirmed
    8 diff: the file differs from the running config
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from typing import Any

OK, INVALID, USAGE, NOT_FOUND, REFUSED, CONFLICT, UNREACHABLE, CANCELLED, DIFFERENT = range(9)
DEFAULT_ADMIN = "http://127.0.0.1:5901"


class CliExit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


class AdminClient:
    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"authorization": f"Bearer {token}"},
                                 timeout=15, trust_env=False)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliExit(UNREACHABLE, f"cannot reach the admin API at {self.http.base_url}: {exc}") from None
        if r.status_code < 300:
            return r
        try:
            body = r.json()
        except ValueError:
            raise CliExit(UNREACHABLE, f"unexpected answer {r.status_code} from {path}") from None
        message = body.get("error", "") if isinstance(body, dict) else str(body)
        problems = body.get("problems") if isinstance(body, dict) else None
        if problems:
            message += "".join(f"\n  - {p}" for p in problems)
        code = {401: REFUSED, 403: REFUSED, 429: REFUSED, 404: NOT_FOUND, 412: CONFLICT, 422: INVALID,
                428: CONFLICT}.get(r.status_code, UNREACHABLE)
        raise CliExit(code, f"{r.status_code}: {message}")


def client_for(args: argparse.Namespace) -> AdminClient:
    token = os.environ.get("KAIROS_ADMIN_TOKEN", "")
    if not token:
        raise CliExit(USAGE, "set KAIROS_ADMIN_TOKEN to an admin or viewer token")
    return AdminClient(args.admin or os.environ.get("KAIROS_ADMIN_URL") or DEFAULT_ADMIN, token)


# --------------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace) -> int:
    data = client_for(args).call("GET", "/admin/status").json()
    last = data.get("last_change") or {}
    rows = [
        ("version", data["version"]), ("uptime", f"{data['uptime_seconds']:.0f} s"),
        ("mode", f"{data['mode']} ({data['workers']} worker{'s' if data['workers'] != 1 else ''})"),
        ("routes", str(data["routes"])), ("config", f"{data['config_source']} ({data['config_digest'][:12]})"),
        ("reloads", f"{data['reloads']['success']} ok, {data['reloads']['error']} failed"),
        ("last change", f"version {last.get('version')} by {last.get('actor')}" if last else "-"),
    ]
    emit(args, data, table([(k, str(v)) for k, v in rows]))
    return OK


def cmd_routes_online(args: argparse.Namespace) -> int:
    data = client_for(args).call("GET", "/admin/routes").json()
    rows = [("ID", "METHODS", "EXTERNAL PATH", "BACKENDS -> INTERNAL PATH")]
    for r in data:
        router = r["router"]
        backends = router.get("backends") or [{"host": router.get("host"), "port": router.get("port")}]
        addresses = ", ".join(f"{b.get('host')}:{b.get('port')}" for b in backends)
        rows.append((r["id"], ",".join(router.get("methods", [])), router.get("external_path", ""),
                     f"{addresses} -> {router.get('internal_path', '')}"))
    emit(args, data, table(rows))
    return OK


def _local_document(path: str) -> dict[str, Any]:
    from kairos.config import ConfigError, load_config
    from kairos.config.loader import read_json

    try:
        load_config(path)
        return read_json(path)
    except ConfigError as exc:
        raise CliExit(INVALID, f"{path}: invalid config, {len(exc.problems)} problem(s):"
                      + "".join(f"\n  - {p}" for p in exc.problems)) from None


def _diff(remote: dict[str, Any], local: dict[str, Any], path: str) -> tuple[list[str], dict[str, Any]]:
    from kairos.admin.document import redacted, summarize

    def lines(doc: dict[str, Any]) -> list[str]:
        return json.dumps(doc, indent=2).splitlines()

    shown_local = redacted(local)
    diff = list(difflib.unified_diff(lines(remote), lines(shown_local), "running", path, lineterm=""))
    return diff, summarize(remote, shown_local)


def _summary_text(summary: dict[str, Any]) -> str:
    parts = [f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in summary.items() if v]
    return "\n".join(parts) if parts else "no differences"


def cmd_diff(args: argparse.Namespace) -> int:
    local = _local_document(args.file)
    remote = client_for(args).call("GET", "/admin/config").json()
    diff, summary = _diff(remote, local, args.file)
    emit(args, {"different": bool(diff), "summary": summary, "diff": diff},
         ("\n".join(diff) + "\n\n" if diff else "") + _summary_text(summary))
    return DIFFERENT if diff else OK


def cmd_apply(args: argparse.Namespace) -> int:
    local = _local_document(args.file)
    client = client_for(args)
    current = client.call("GET", "/admin/config")
    diff, summary = _diff(current.json(), local, args.file)
    if not diff:
        emit(args, {"applied": False, "summary": summary}, "nothing to apply: the running config is the same")
        return OK
    if not args.json:
        print("\n".join(diff) + "\n\n" + _summary_text(summary))
    if sys.stdin.isatty() and not args.yes:
        answer = input("apply this change? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("not applied", file=sys.stderr)
            return CANCELLED
    r = client.call("PUT", "/admin/config", json=local, headers={"if-match": current.headers.get("etag", "")})
    result = r.json()
    emit(args, {"applied": True, **result}, f"applied: version {result['version']} ({result['etag']})")
    return OK


def _drain(args: argparse.Namespace, action: str) -> int:
    from urllib.parse import quote

    r = client_for(args).call("POST", f"/admin/clusters/{quote(args.backend, safe=':/')}/{action}")
    row = r.json()
    emit(args, row, f"{row['address']}: {'drained' if row['drained'] else 'in rotation'} "
                    f"({row['in_flight'] if row['in_flight'] is not None else '?'} in flight)")
    return OK


def cmd_drain(args: argparse.Namespace) -> int:
    return _drain(args, "drain")


def cmd_undrain(args: argparse.Namespace) -> int:
    return _drain(args, "undrain")


def cmd_match(args: argparse.Namespace) -> int:
    from kairos.admin.match import match_request
    from kairos.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CliExit(INVALID, f"{args.config}: invalid config:" + "".join(f"\n  - {p}" for p in exc.problems)) from None
    result = match_request(config, args.method, args.url)
    if not result["matched"]:
        emit(args, result, f"no match ({result['status']}): {result['reason']}")
        return NOT_FOUND
    route = result["route"]
    pol = {k: (" ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else v)
           for k, v in result["policies"].items() if v not in (None, False, [])}
    rows = [
        ("route", f"{route['id']}  {','.join(route['methods'])} {route['external_path']}  (routers[{route['index']}])"),
        ("params", ", ".join(f"{k}={v}" for k, v in result["params"].items()) or "-"),
        ("upstream path", result["upstream_path"]),
        ("backends", ", ".join(f"{b['address']} (w{b['weight']})" for b in result["backends"])),
        ("policies", "; ".join(f"{k}: {v}" if v is not True else k for k, v in pol.items())),
    ]
    emit(args, result, table(rows))
    return OK


def add_commands(sub: Any) -> None:
    def online(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--admin", help=f"admin API URL (default: $KAIROS_ADMIN_URL or {DEFAULT_ADMIN}); token from $KAIROS_ADMIN_TOKEN")
        p.add_argument("--json", action="store_true", help="JSON output for scripts")
        return p

    online("status", "a running gateway's status").set_defaults(func=cmd_status)
    p = online("diff", "what applying FILE would change in the running config")
    p.add_argument("file")
    p.set_defaults(func=cmd_diff)
    p = online("apply", "validate FILE, show the difference, push it (asks on a terminal)")
    p.add_argument("file")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_apply)
    for name, fn in (("drain", cmd_drain), ("undrain", cmd_undrain)):
        p = online(name, f"{name} a backend (address, e.g. 10.0.0.5:8080)")
        p.add_argument("backend")
        p.set_defaults(func=fn)
    p = sub.add_parser("match", help="which route a request would take (offline, from a config file)")
    p.add_argument("config")
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_match)
