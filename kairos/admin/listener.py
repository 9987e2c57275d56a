"""Running the admin app on its own uvicorn server, never on the proxy's port.

The socket is bound before anything starts, so a taken admin port stops
`kairos serve` with a clear message instead of a gateway silently without admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from typing import Any

import uvicorn

from kairos.admin.api import AdminState, create_admin_app
from kairos.admin.tokens import TokenSetupError, TokenTable
from kairos.config import GatewayConfig


class AdminSetupError(Exception):
    pass


def bind(config: GatewayConfig) -> socket.socket:
    host, port = config.admin.host, config.admin.port
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise AdminSetupError(f"admin listener: cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(64)
    sock.set_inheritable(False)  # workers must never accept admin connections
    return sock


def tokens_for(config: GatewayConfig) -> TokenTable:
    try:
        return TokenTable.from_config(config.admin)
    except TokenSetupError as exc:
        raise AdminSetupError(str(exc)) from None


class AdminServer(uvicorn.Server):
    """uvicorn's server without its signal handling: the gateway (or the supervisor) owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


def make_server(state: AdminState) -> AdminServer:
    app = create_admin_app(state)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=1, proxy_headers=False, forwarded_allow_ips="")
    return AdminServer(config)


async def serve_with(gateway_serve: Any, admin: AdminServer, sock: socket.socket) -> None:
    """Run the gateway's server and the admin server on one event loop; the gateway decides when to stop."""
    task = asyncio.get_running_loop().create_task(admin.serve(sockets=[sock]))
    try:
        await gateway_serve
    finally:
        admin.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 5)


def serve_in_thread(admin: AdminServer, sock: socket.socket) -> threading.Thread:
    """For the supervisor of `--workers N`: the admin server on its own loop in a daemon thread."""

    def run() -> None:
        try:
            asyncio.run(admin.serve(sockets=[sock]))
        except SystemExit:
            print("kairos: the admin listener stopped", file=sys.stderr)

    thread = threading.Thread(target=run, name="kairos-admin", daemon=True)
    thread.start()
    return thread
