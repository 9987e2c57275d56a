"""Helpers for the edge-policy tests (JWT, rate limiting, IP rules): in-process gateway, keys, a respx JWKS endpoint."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any, AsyncIterator

import httpx
import respx
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
    """A JWKS endpoint answered by respx in this process (no socket): the gateway's JWKS fetches
    go through its httpx client, which respx intercepts; every other request passes through."""

    _count = 0

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.down = False
        JwksServer._count += 1
        self.url = f"http://jwks-{JwksServer._count}.test/.well-known/jwks.json"
        self._router: respx.MockRouter | None = None

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.hits += 1
        if self.down:
            return httpx.Response(503, text="down")
        return httpx.Response(200, json={"keys": self.keys})

    async def start(self) -> "JwksServer":
        router = respx.mock(using="httpx", assert_all_called=False)
        router.get(self.url).mock(side_effect=self._handle)
        router.route().pass_through()
        router.start()
        self._router = router
        return self

    async def stop(self) -> None:
        if self._router is not None:
            self._router.stop()
            self._router = None


def client_for(app, ip: str) -> httpx.AsyncClient:
    """Another client of the same in-process app, from another peer address."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(ip, 40001)), base_url="http://gw")
