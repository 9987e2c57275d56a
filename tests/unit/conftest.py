"""The unit tier: everything in this process, no subprocesses, no real upstream servers.

`upstream` here is an in-memory stand-in for tests/upstream.py's Upstream: the
gateway's upstream client answers every request to its port like Upstream's
/echo, without a socket. httpx traffic (JWKS fetches, health probes) is answered
by respx. A test that starts a subprocess fails: it belongs in tests/integration/.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import orjson
import pytest

from kairos.upstream.client import UpstreamClient
from kairos.upstream.errors import UpstreamConnectError
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def _no_subprocesses(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the unit tier starts no subprocess: move this test to tests/integration/")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse)


class EchoResponse:
    """What UpstreamClient.request returns, from memory."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.raw_headers = headers
        self.read_timeout: float | None = None
        self._chunks = [body] if body else []

    async def read(self) -> bytes:
        return self._chunks.pop() if self._chunks else b""

    def release(self) -> None:
        self._chunks = []

    def abort(self) -> None:
        self._chunks = []


class EchoUpstream:
    """Answers the gateway's requests to 127.0.0.1:<port> like Upstream's /echo (same JSON)."""

    host = "http://127.0.0.1"

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.port = free_port()  # never listened on: a request to another port is refused
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def backend(self, weight: int = 1, **extra: Any) -> dict:
        return {"host": self.host, "port": self.port, "weight": weight, **extra}

    async def answer(self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: Any) -> EchoResponse:
        n = 0
        if isinstance(body, (bytes, bytearray)):
            n = len(body)
        elif body is not None:
            async for chunk in body:
                n += len(chunk)
        path, _, query = target.partition("?")
        record = {
            "method": method,
            "path": path,
            "raw_path": target,
            "query": query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
            "body_len": n,
            "upstream": self.name,
        }
        self.requests.append(record)
        payload = orjson.dumps(record)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"x-upstream", self.name.encode())]
        return EchoResponse(200, raw, payload)


@pytest.fixture
def upstream(monkeypatch):
    """An in-memory echo upstream behind the gateway's upstream client (see the module docstring)."""
    echo = EchoUpstream()

    async def request(self, scheme, host, port, method, target, headers, body=None, connect_timeout=None, *more, **options):
        if port != echo.port:
            raise UpstreamConnectError(f"nothing listens on {host}:{port} (unit tier)")
        return await echo.answer(method, target, headers, body)

    monkeypatch.setattr(UpstreamClient, "request", request)
    return echo
