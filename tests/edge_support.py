"""Helpers for the edge-policy tests (JWT, rate limiting, IP rules): in-process gateway, keys, JWKS server."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any, AsyncIterator

import httpx
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kairos.app import create_app

SECRET = "test-secret-0123456789-abcdefghijklmnop"  # >= 32 chars


def route(upstream, path: str = "/api", **extra: Any) -> dict[str, Any]:
    return {
        "external_path": path,
        "internal_path": "/echo",
        "methods": extra.pop("methods", ["GET", "POST", "DELETE"]),
        "host": "http://127.0.0.1",
        "port": upstream.port,
        **extra,
    }


@contextlib.asynccontextmanager
async def inproc(config: dict[str, Any], client_ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app in this process, behind httpx's ASGI transport (peer = client_ip)."""
    app = create_app(config)
    gw = app.state.gateway
    await gw.start()
    transport = httpx.ASGITransport(app, client=(client_ip, 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c
    finally:
        await gw.aclose()


def echoed_headers(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in response.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def now() -> int:
    return int(time.time())


def claims(**over: Any) -> dict[str, Any]:
    base = {"sub": "alice", "iat": now(), "exp": now() + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


# ----------------------------------------------------------------------------- keys
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _b64int(n: int, length: int | None = None) -> str:
    data = n.to_bytes(length or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key, kid: str, alg: str) -> dict[str, Any]:
    pub = key.public_key().public_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        return {"kty": "RSA", "kid": kid, "alg": alg, "use": "sig", "n": _b64int(pub.n), "e": _b64int(pub.e)}
    return {"kty": "EC", "kid": kid, "alg": alg, "use": "sig", "crv": "P-256",
            "x": _b64int(pub.x, 32), "y": _b64int(pub.y, 32)}


class JwksServer:
    """A real HTTP server (aiohttp.web, in the test's loop) serving a mutable JWKS."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.down = False
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.down:
            return web.Response(status=503, text="down")
        return web.Response(body=json.dumps({"keys": self.keys}).encode(), content_type="application/json")

    async def start(self) -> "JwksServer":
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def client_for(app, ip: str) -> httpx.AsyncClient:
    """Another client of the same in-process app, from another peer address."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(ip, 40001)), base_url="http://gw")
