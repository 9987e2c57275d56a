"""A real upstream on 127.0.0.1 whose answers each test scripts, for the cache and compression tests.

    up = ScriptedUpstream().start()
    up.on("/doc", lambda request: web.Response(body=b"x", headers={"Cache-Control": "max-age=60"}))
    up.on("/slow", handler)          # handler may be sync or async, gets the aiohttp request
    up.hits["/doc"]                  # requests that reached /doc
    up.seen["/doc"][-1]              # the last request's headers (a CIMultiDictProxy)
    up.stop()

The server runs in its own thread and loop, so the gateway subprocess talks to it
over a real socket exactly as in production.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from collections import defaultdict
from typing import Any, Callable

from aiohttp import web


class ScriptedUpstream:
    host = "http://127.0.0.1"

    def __init__(self) -> None:
        self.port = 0
        self.handlers: dict[str, Callable[[web.Request], Any]] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None

    def on(self, path: str, handler: Callable[[web.Request], Any]) -> None:
        self.handlers[path] = handler

    def backend(self) -> dict:
        return {"host": self.host, "port": self.port}

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        self.seen[path].append(request.headers.copy())
        handler = self.handlers.get(path)
        if handler is None:
            return web.Response(status=404, text="no script for " + path)
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result

    def start(self) -> "ScriptedUpstream":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def boot() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5,
                                   auto_decompress=False)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._runner = runner

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(boot())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="scripted-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def call(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on the server's loop (e.g. to set an asyncio.Event a handler waits on)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None
