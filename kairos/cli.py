"""The `kairos` command: serve, validate, routes, schema; match, status, diff, apply, drain (kairos.admin.client)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from kairos import __version__
from kairos.config import ConfigError, GatewayConfig, load_config
from kairos.config.loader import config_path_from_env


def _print_problems(exc: ConfigError, path: str) -> None:
    print(f"{path}: invalid config, {len(exc.problems)} problem(s):", file=sys.stderr)
    for line in exc.problems:
        print(f"  - {line}", file=sys.stderr)


def _load_or_exit(path: str) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        _print_problems(exc, path)
        raise SystemExit(1) from None


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.path)
    backends = {b.address for r in config.routers for b in r.backend_list}
    print(f"{args.path}: valid ({len(config.routers)} routes, {len(backends)} backends)")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    if args.admin or args.path is None:
        from kairos.admin.client import cmd_routes_online

        return cmd_routes_online(args)
    config = _load_or_exit(args.path)
    rows = [("METHODS", "EXTERNAL PATH", "BACKENDS -> INTERNAL PATH", "STRATEGY", "AUTH")]
    for r in config.routers:
        backends = ", ".join(
            f"{b.address}" + (f" (w{b.weight})" if r.load_balancing_strategy == "weighted" else "") for b in r.backend_list
        )
        rows.append(
            (
                ",".join(r.methods),
                r.external_path,
                f"{backends} -> {r.internal_path}",
                r.load_balancing_strategy,
                "jwt" if r.auth_required else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(GatewayConfig.model_json_schema(), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from kairos.observability.logging import configure_logging

    path = args.config or config_path_from_env()
    if args.host:
        os.environ["KAIROS_HOST"] = args.host
    if args.port:
        os.environ["KAIROS_PORT"] = str(args.port)
    config = _load_or_exit(path)
    os.environ["KAIROS_CONFIG_PATH"] = os.path.abspath(path)
    configure_logging(config.logging.level)
    workers = args.workers or 1
    options = dict(
        host=config.server.host,
        port=config.server.port,
        # One Server and one Date, the gateway's: the upstream's are not relayed (as nginx).
        server_header=False,
        date_header=True,
        headers=[("server", "kairos")],
        # trusted_proxies is the one source of client addresses: uvicorn must not
        # rewrite the peer from X-Forwarded-For on its own.
        proxy_headers=False,
        forwarded_allow_ips="",
        timeout_graceful_shutdown=config.server.shutdown_timeout_s,
        log_config=None,
        access_log=False,
        lifespan="on",
        # uvicorn's httptools protocol + the request-head deadline and caps, enforced while reading
        http="kairos.server:RequestHeadProtocol",
        # uvicorn's WebSocket protocol, with permessage-deflate decided per route (docs/websocket.md).
        ws="kairos.websocket.protocol:WebSocketProtocol",
    )
    admin_sock = _admin_socket(config)
    if workers > 1:
        return _serve_workers(uvicorn.Config("kairos.app:app", workers=workers, **options), admin_sock)  # type: ignore[arg-type]
    from kairos.app import create_app
    from kairos.server import GatewayServer

    app = create_app(path)
    server = GatewayServer(uvicorn.Config(app, **options))  # type: ignore[arg-type]
    # uvicorn re-raises the caught SIGTERM after a clean shutdown (the process then dies
    # "by signal", exit 143); a gateway that drained cleanly exits 0.
    server.capture_signals = _capture_signals(server, app.state.gateway)  # type: ignore[method-assign]
    if admin_sock is None:
        server.run()
        return 0
    from uvicorn._compat import asyncio_run

    from kairos.admin.api import AdminState
    from kairos.admin.control import LiveControl
    from kairos.admin.listener import make_server, serve_with, tokens_for

    gateway = app.state.gateway
    state = AdminState(LiveControl(gateway), gateway.config_path, tokens_for(config))
    admin = make_server(state)
    asyncio_run(serve_with(server.serve(), admin, admin_sock), loop_factory=server.config.get_loop_factory())
    return 0


def _admin_socket(config: GatewayConfig):  # type: ignore[no-untyped-def]
    """The admin listener's socket, bound before anything starts; exit 1 with the reason if it cannot be."""
    if not config.admin.enabled:
        return None
    from kairos.admin.listener import AdminSetupError, bind, tokens_for

    try:
        tokens_for(config)  # a missing token variable stops the start, with its name
        return bind(config)
    except AdminSetupError as exc:
        print(f"kairos: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _capture_signals(server: "uvicorn.Server", gateway: "Gateway"):  # type: ignore[name-defined]  # noqa: F821
    """SIGTERM drains, SIGINT stops, SIGHUP reloads (kairos.gateway.install_signal_handlers); none is re-raised."""
    import contextlib
    import signal

    from kairos.gateway import install_signal_handlers

    @contextlib.contextmanager
    def capture():
        previous = install_signal_handlers(gateway, server)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return capture


def _serve_workers(config: "uvicorn.Config", admin_sock=None) -> int:  # type: ignore[name-defined]  # noqa: F821
    """N worker processes behind one socket, metrics summed across them.

    The prometheus-client multiprocess directory is prepared here, before any worker
    starts (each worker picks its value class when it imports prometheus_client):
    $PROMETHEUS_MULTIPROC_DIR if set (its *.db files removed), else a temporary
    directory removed at exit. A dead worker's live gauges are dropped. SIGHUP is
    forwarded to the workers, which reload their config in place (uvicorn's default
    would restart them and lose their live state); SIGTERM makes each worker drain.
    """
    import shutil
    import signal

    from uvicorn.supervisors import Multiprocess

    from kairos.observability import metrics

    directory, created = metrics.prepare_multiprocess_dir(metrics.multiprocess_dir())

    class Workers(Multiprocess):
        def handle_hup(self) -> None:
            for process in self.processes:
                pid = process.pid
                if pid is not None and process.process.is_alive():
                    try:
                        os.kill(pid, signal.SIGHUP)
                    except ProcessLookupError:
                        pass

        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            for pid in before - {p.pid for p in self.processes}:
                if pid is not None:
                    metrics.mark_dead(pid)

    from uvicorn.supervisors import multiprocess

    from kairos.server import GatewayProcess

    if GatewayProcess is not None:
        # Each worker serves with GatewayServer (greedy accept), as the single-process mode does.
        multiprocess.Process = GatewayProcess  # type: ignore[misc]
    sock = config.bind_socket()
    supervisor = Workers(config, sockets=[sock])
    admin = None
    if admin_sock is not None:
        # One admin port for the whole gateway: it lives here, in the supervisor; changes reach
        # the workers through the config file and SIGHUP (docs/admin.md).
        from kairos.admin.api import AdminState
        from kairos.admin.control import SupervisorControl
        from kairos.admin.listener import make_server, serve_in_thread, tokens_for

        control = SupervisorControl(os.environ["KAIROS_CONFIG_PATH"], config.workers, supervisor.handle_hup)
        admin = make_server(AdminState(control, control.config_path, tokens_for(control.config)))
        serve_in_thread(admin, admin_sock)
    try:
        supervisor.run()
    finally:
        if admin is not None:
            admin.should_exit = True
        for process in supervisor.processes:
            if process.pid is not None:
                metrics.mark_dead(process.pid)
        sock.close()
        if created:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


def cmd_cache_purge(args: argparse.Namespace) -> int:
    import asyncio

    from kairos.cache.purge import purge_redis, redis_caches
    from kairos.edge import redis_url_for

    config = _load_or_exit(args.path)
    if args.route is not None and all(r.external_path != args.route for r in config.routers):
        print(f"{args.path}: no route with external_path {args.route!r}", file=sys.stderr)
        return 1
    if not redis_caches(config, redis_url_for, args.route):
        print("no route here caches in Redis: in-process caches are purged through the running gateway",
              file=sys.stderr)
        return 1
    try:
        removed = asyncio.run(purge_redis(config, redis_url_for, args.route))
    except Exception as exc:  # Redis unreachable: say so, no traceback
        from kairos.observability.logging import redact

        print(f"cache purge failed: {redact(str(exc))}", file=sys.stderr)
        return 1
    print(f"purged {removed} cached URL(s)" + (f" of route {args.route}" if args.route else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairos", description="kairos API gateway")
    parser.add_argument("--version", action="version", version=f"kairos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="config file (default: $KAIROS_CONFIG_PATH or ./config.json)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 5900)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check a config file and list every problem")
    validate.add_argument("path")
    validate.set_defaults(func=cmd_validate)

    routes = sub.add_parser("routes", help="print a config's route table (or a running gateway's, with --admin)")
    routes.add_argument("path", nargs="?")
    routes.add_argument("--admin", help="admin API URL (token from $KAIROS_ADMIN_TOKEN)")
    routes.add_argument("--json", action="store_true", help="JSON output (with --admin)")
    routes.set_defaults(func=cmd_routes)

    from kairos.admin.client import add_commands

    add_commands(sub)

    schema = sub.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    cache = sub.add_parser("cache", help="operate on the response cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    purge = cache_sub.add_parser("purge", help="remove cached responses from the Redis cache backend")
    purge.add_argument("path", metavar="CONFIG")
    purge.add_argument("--route", help="only this route (its external_path)")
    purge.set_defaults(func=cmd_cache_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from kairos.admin.client import CliExit

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliExit as exc:
        if exc.message:
            print(f"kairos: {exc.message}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
