"""Tiny services the gateway can sit in front of: users and orders (JSON), chat (a WebSocket echo).

They are plain Starlette apps; `serve()` runs one or both with uvicorn on a
single event loop (one `uvicorn.Server(...).serve()` task per service) and
stops them gracefully on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from typing import Iterable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

_NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov",
          "Donald Knuth", "Margaret Hamilton", "Ken Thompson"]


def _user(user_id: str) -> dict:
    try:
        n = int(user_id)
    except ValueError:
        n = sum(map(ord, user_id))
    name = _NAMES[n % len(_NAMES)]
    return {"id": user_id, "name": name, "email": f"{name.split()[0].lower()}.{user_id}@example.com"}


def _order(order_id: str) -> dict:
    try:
        n = int(order_id)
    except ValueError:
        n = sum(map(ord, order_id))
    return {"id": order_id, "user_id": str(n % 8 + 1), "items": n % 5 + 1,
            "total_cents": 1000 + (n * 137) % 9000, "status": ("pending", "paid", "shipped")[n % 3]}


def _json(service: str, data, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"X-Demo-Service": service})


def build_users_app() -> Starlette:
    ids = itertools.count(1001)

    async def list_users(request: Request) -> JSONResponse:
        return _json("users", {"users": [_user(str(i)) for i in range(1, 6)]})

    async def get_user(request: Request) -> JSONResponse:
        return _json("users", _user(request.path_params["id"]))

    async def create_user(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _json("users", {"error": "body must be JSON"}, 400)
        if not isinstance(body, dict):
            return _json("users", {"error": "body must be a JSON object"}, 400)
        return _json("users", {**body, "id": str(next(ids))}, 201)

    async def healthz(request: Request) -> JSONResponse:
        return _json("users", {"status": "ok", "service": "users"})

    return Starlette(routes=[
        Route("/users", list_users, methods=["GET"]),
        Route("/users", create_user, methods=["POST"]),
        Route("/users/{id}", get_user, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


def build_orders_app() -> Starlette:
    async def list_orders(request: Request) -> JSONResponse:
        return _json("orders", {"orders": [_order(str(i)) for i in range(1, 6)]})

    async def get_order(request: Request) -> JSONResponse:
        return _json("orders", _order(request.path_params["id"]))

    async def healthz(request: Request) -> JSONResponse:
        return _json("orders", {"status": "ok", "service": "orders"})

    return Starlette(routes=[
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/{id}", get_order, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


def build_chat_app() -> Starlette:
    """A WebSocket echo: greets with a JSON hello, then sends every message back as it came."""

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        room = websocket.path_params["room"]
        await websocket.send_json({"hello": room, "service": "chat"})
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                elif message.get("bytes") is not None:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            return

    async def healthz(request: Request) -> JSONResponse:
        return _json("chat", {"status": "ok", "service": "chat"})

    return Starlette(routes=[WebSocketRoute("/echo/{room}", echo), Route("/healthz", healthz, methods=["GET"])])


BUILDERS = {"users": build_users_app, "orders": build_orders_app, "chat": build_chat_app}


async def serve(host: str = "127.0.0.1", ports: dict[str, int] | None = None,
                only: Iterable[str] | None = None, log_level: str = "warning") -> None:
    """Serve the selected services until SIGINT/SIGTERM."""
    ports = {"users": 3001, "orders": 3002, "chat": 3003, **(ports or {})}
    names = list(only) if only else list(BUILDERS)
    servers = []
    for name in names:
        config = uvicorn.Config(BUILDERS[name](), host=host, port=ports[name], log_level=log_level,
                                access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        # One process, several servers: signals are handled once, below, for all of them
        # (uvicorn's own capture_signals would let only the last server see the signal).
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        servers.append((name, server))

    loop = asyncio.get_running_loop()

    def stop() -> None:
        for _, s in servers:
            if s.should_exit:  # second Ctrl-C: do not wait for open connections
                s.force_exit = True
            s.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
            pass

    tasks = [asyncio.create_task(s.serve(), name=f"demo-{n}") for n, s in servers]
    for name in names:
        print(f"kairos demo: {name} on http://{host}:{ports[name]}", flush=True)
    try:
        await asyncio.gather(*tasks)
    finally:
        for _, s in servers:
            s.should_exit = True
