"""A controllable, real upstream HTTP server for integration tests.

`Upstream` runs an aiohttp.web server on 127.0.0.1 (ephemeral port) in a
background thread with its own event loop, so tests -- sync or async -- start
and stop it synchronously and talk to it over a real socket, exactly as the
gateway does.

    up = Upstream("users").start()
    ...                       # up.url, up.port, up.host, up.backend()
    up.fail_next(2)           # next 2 requests answer 503
    up.close_next(1)          # next request: connection dropped, no answer
    up.set_delay(200)         # every request waits 200 ms first
    up.set_status(418)        # /echo (and unknown paths) answer 418
    up.healthy = False        # /healthz answers 503
    up.requests[-1].header("x-request-id")
    up.stop()

Endpoints (any method): /echo and any unknown path, /status/{code},
/slow?ms=N, /hang, /reset, /close, /stream?chunks=N&size=S&interval_ms=I,
/bytes?n=N, /sse?events=N&interval_ms=I, /upload, /cookie?name=a&value=1,
/gzip, /healthz.  Every response carries `X-Upstream: <name>`.

`/healthz` is deliberately outside the fault controls (fail_next, close_next,
set_delay, set_status) and is not recorded in `.requests`/`.count` -- so the
gateway's active health probes never consume armed failures or change request
counts.  Probes are counted in `.health_count` instead; only the `healthy`
flag (and `set_health_delay`) governs that endpoint.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

__all__ = ["Upstream", "RecordedRequest", "GZIP_PLAIN"]

CHUNK = 64 * 1024
_ZERO_CHUNK = b"k" * CHUNK  # shared, immutable: /bytes never allocates per chunk

#: The uncompressed body served (gzip-compressed) by /gzip.
GZIP_PLAIN = json.dumps({"gzipped": True, "message": "hello " * 50}).encode()
_GZIP_BODY = gzip.compress(GZIP_PLAIN)


@dataclass
class RecordedRequest:
    """One request as the upstream received it."""

    name: str  # the upstream's name
    method: str
    path: str  # decoded path, no query
    raw_path: str  # path + query exactly as sent on the request line
    query: str
    headers: list[tuple[str, str]]  # in order, duplicates kept, names as sent
    version: str
    remote: str | None
    t: float  # time.monotonic() at arrival
    body_len: int | None = None  # None until (unless) the body was read
    completed: bool = False  # a response was produced
    cancelled: bool = False  # the client went away while the handler ran

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header `name` (case-insensitive)."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def __getitem__(self, key: str) -> Any:  # dict-style access for convenience
        return getattr(self, key)


@dataclass
class _Controls:
    fail_remaining: int = 0
    fail_status: int = 503
    close_remaining: int = 0
    delay_ms: float = 0.0
    status: int = 200
    health_delay_ms: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Upstream:
    """A real HTTP upstream on 127.0.0.1 whose behaviour tests control."""

    host = "http://127.0.0.1"
    address = "127.0.0.1"  # a subclass may listen on another loopback address (DNS discovery tests)

    def __init__(self, name: str = "upstream", *, port: int = 0, keepalive_timeout: float = 75.0):
        self.name = name
        self.port = port
        self.keepalive_timeout = keepalive_timeout
        self.healthy = True
        self.requests: list[RecordedRequest] = []
        self.health_count = 0
        self._c = _Controls()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def start_many(cls, n: int, prefix: str = "up") -> list["Upstream"]:
        """Start `n` upstreams named prefix0..prefix{n-1}."""
        started: list[Upstream] = []
        try:
            for i in range(n):
                started.append(cls(f"{prefix}{i}").start())
        except BaseException:
            for u in started:
                u.stop()
            raise
        return started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def backend(self, weight: int = 1, **extra: Any) -> dict:
        """This upstream as a kairos `backends[]` entry."""
        return {"host": self.host, "port": self.port, "weight": weight, **extra}

    def start(self) -> "Upstream":
        """Start serving (on the previous port again if it was started before)."""
        if self.running:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, self.port))
        sock.listen(512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]

        ready = threading.Event()
        error: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def boot() -> None:
            app = web.Application(client_max_size=1024**4)
            app.router.add_route("*", "/{tail:.*}", self._dispatch)
            runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=0.5,
                handler_cancellation=True,
                keepalive_timeout=self.keepalive_timeout,
                auto_decompress=False,
            )
            await runner.setup()
            site = web.SockSite(runner, sock)
            await site.start()
            self._runner = runner

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as e:  # pragma: no cover - surfaced to start()
                error.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            sock.close()
            raise error[0]
        return self

    def stop(self) -> None:
        """Stop serving; in-flight requests (even /hang) are cancelled. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return

        async def shutdown() -> None:
            me = asyncio.current_task()
            runner = self._runner
            if runner is not None:
                for site in list(runner.sites):
                    await site.stop()
            for t in asyncio.all_tasks():
                if t is not me:
                    t.cancel()
            if runner is not None:
                try:
                    await asyncio.wait_for(runner.cleanup(), 5)
                except Exception:
                    pass

        fut = asyncio.run_coroutine_threadsafe(shutdown(), loop)
        try:
            fut.result(10)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None
        self._runner = None

    def __enter__(self) -> "Upstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {self.url} running={self.running} count={self.count}>"

    # ---------------------------------------------------------------- controls
    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def last(self) -> RecordedRequest | None:
        return self.requests[-1] if self.requests else None

    def reset(self) -> None:
        """Forget recorded requests and disarm every control (healthy=True again)."""
        with self._c.lock:
            self._c.fail_remaining = 0
            self._c.fail_status = 503
            self._c.close_remaining = 0
            self._c.delay_ms = 0.0
            self._c.status = 200
            self._c.health_delay_ms = 0.0
        self.healthy = True
        self.requests.clear()
        self.health_count = 0

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` requests answer `status` (JSON body) instead of their endpoint."""
        with self._c.lock:
            self._c.fail_remaining = n
            self._c.fail_status = status

    def close_next(self, n: int) -> None:
        """The next `n` requests get their connection closed without any answer."""
        with self._c.lock:
            self._c.close_remaining = n

    def set_delay(self, ms: float) -> None:
        """Wait `ms` before answering every request (0 to switch off)."""
        with self._c.lock:
            self._c.delay_ms = ms

    def set_status(self, code: int) -> None:
        """Status used by /echo and unknown paths (200 by default)."""
        with self._c.lock:
            self._c.status = code

    def set_health_delay(self, ms: float) -> None:
        """Wait `ms` before answering /healthz (for probe-timeout tests)."""
        with self._c.lock:
            self._c.health_delay_ms = ms

    def wait_for_count(self, n: int, timeout: float = 5.0) -> bool:
        """Block (sync) until at least `n` requests were recorded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count >= n:
                return True
            time.sleep(0.01)
        return self.count >= n

    # ---------------------------------------------------------------- serving
    def _json(self, data: Any, status: int = 200, headers: CIMultiDict | None = None) -> web.Response:
        h = CIMultiDict(headers or {})
        h["X-Upstream"] = self.name
        return web.Response(body=json.dumps(data).encode(), status=status, headers=h,
                            content_type="application/json")

    @staticmethod
    async def _read_body(request: web.Request, rec: RecordedRequest) -> int:
        n = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            n += len(chunk)
        rec.body_len = n
        return n

    @staticmethod
    def _qint(request: web.Request, key: str, default: int) -> int:
        try:
            return int(float(request.query.get(key, default)))
        except ValueError:
            return default

    def _take(self, attr: str) -> bool:
        with self._c.lock:
            left = getattr(self._c, attr)
            if left > 0:
                setattr(self._c, attr, left - 1)
                return True
            return False

    async def _drop(self, request: web.Request, rst: bool) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            if rst:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        # The connection is gone: wait for aiohttp to cancel this handler.
        await asyncio.sleep(3600)
        raise web.HTTPInternalServerError()  # pragma: no cover

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            self.health_count += 1
            if self._c.health_delay_ms:
                await asyncio.sleep(self._c.health_delay_ms / 1000)
            ok = self.healthy
            return self._json({"status": "ok" if ok else "unhealthy", "upstream": self.name},
                              status=200 if ok else 503)

        peer = request.transport.get_extra_info("peername") if request.transport else None
        rec = RecordedRequest(
            name=self.name,
            method=request.method,
            path=path,
            raw_path=request.raw_path,
            query=request.query_string,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            version=f"{request.version.major}.{request.version.minor}",
            remote=f"{peer[0]}:{peer[1]}" if peer else None,
            t=time.monotonic(),
        )
        self.requests.append(rec)
        try:
            resp = await self._handle(request, rec, path)
            rec.completed = True
            return resp
        except asyncio.CancelledError:
            rec.cancelled = True
            raise

    async def _handle(self, request: web.Request, rec: RecordedRequest, path: str) -> web.StreamResponse:
        if self._c.delay_ms:
            await asyncio.sleep(self._c.delay_ms / 1000)
        if self._take("close_remaining"):
            return await self._drop(request, rst=False)
        if self._take("fail_remaining"):
            await self._read_body(request, rec)
            return self._json({"error": "injected failure", "upstream": self.name},
                              status=self._c.fail_status)

        if path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
            except ValueError:
                code = 400
            await self._read_body(request, rec)
            if code in (204, 304) or code < 200:
                return web.Response(status=code, headers={"X-Upstream": self.name})
            return self._json({"status": code, "upstream": self.name}, status=code)

        if path == "/slow":
            await asyncio.sleep(self._qint(request, "ms", 1000) / 1000)
            await self._read_body(request, rec)
            return self._json({"slow_ms": self._qint(request, "ms", 1000), "upstream": self.name})

        if path == "/hang":
            await asyncio.sleep(3600)

        if path == "/reset":
            return await self._drop(request, rst=True)

        if path == "/close":
            return await self._drop(request, rst=False)

        if path == "/stream":
            chunks = self._qint(request, "chunks", 5)
            size = self._qint(request, "size", 16)
            interval = self._qint(request, "interval_ms", 50) / 1000
            resp = web.StreamResponse(headers={"X-Upstream": self.name, "Content-Type": "application/octet-stream"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(chunks):
                if i and interval:
                    await asyncio.sleep(interval)
                await resp.write(bytes([0x61 + i % 26]) * size)
            await resp.write_eof()
            return resp

        if path == "/bytes":
            n = self._qint(request, "n", CHUNK)
            resp = web.StreamResponse(headers={"X-Upstream": self.name, "Content-Type": "application/octet-stream"})
            resp.content_length = n
            await resp.prepare(request)
            left = n
            while left > 0:
                step = min(left, CHUNK)
                await resp.write(_ZERO_CHUNK if step == CHUNK else _ZERO_CHUNK[:step])
                left -= step
            await resp.write_eof()
            return resp

        if path == "/sse":
            events = self._qint(request, "events", 5)
            interval = self._qint(request, "interval_ms", 100) / 1000
            resp = web.StreamResponse(headers={
                "X-Upstream": self.name,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
            })
            await resp.prepare(request)
            for i in range(events):
                if i and interval:
                    await asyncio.sleep(interval)
                await resp.write(f"data: {i}\n\n".encode())
            await resp.write_eof()
            return resp

        if path == "/upload":
            n = await self._read_body(request, rec)
            return self._json({"body_len": n, "upstream": self.name})

        if path == "/cookie":
            await self._read_body(request, rec)
            name = request.query.get("name", "a")
            value = request.query.get("value", "1")
            h = CIMultiDict()
            h.add("Set-Cookie", f"{name}={value}")
            h.add("Set-Cookie", "b=2")
            return self._json({"cookie": request.headers.get("Cookie"),
                               "cookies": request.headers.getall("Cookie", []),
                               "upstream": self.name}, headers=h)

        if path == "/gzip":
            await self._read_body(request, rec)
            return web.Response(body=_GZIP_BODY, headers={
                "X-Upstream": self.name,
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            })

        # /echo and everything else
        n = await self._read_body(request, rec)
        return self._json({
            "method": request.method,
            "path": path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": [list(h) for h in rec.headers],
            "body_len": n,
            "upstream": self.name,
        }, status=self._c.status)
