"""Helpers for the admin tests: a gateway with the admin listener on, and a client for it."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx

from tests.conftest import free_port

ADMIN_TOKEN = "admin-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"
JWT_SECRET = "jwt-secret-long-enough-0123456789-abcdefgh"
REDIS_PASSWORD = "redis-pass-987654321"
TOKEN_ENV = "ADMIN_TOKEN_FOR_TEST"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


SECRETS = (ADMIN_TOKEN, VIEWER_TOKEN, JWT_SECRET, REDIS_PASSWORD, sha(ADMIN_TOKEN), sha(VIEWER_TOKEN))


def admin_block(port: int, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "port": port, "tokens": [
        {"name": "ops", "role": "admin", "token_env": TOKEN_ENV},
        {"name": "watcher", "role": "viewer", "token_sha256": sha(VIEWER_TOKEN)},
    ], **extra}


def with_secrets(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config carrying every kind of secret the admin API must never show."""
    cfg.setdefault("jwt", {"secret": JWT_SECRET})
    cfg.setdefault("rate_limit", {"requests_per_window": 100000, "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"})
    return cfg


def start_admin_gateway(gateway, cfg: dict[str, Any], workers: int = 1, **admin_extra: Any):
    port = free_port()
    cfg["admin"] = admin_block(port, **admin_extra)
    gw = gateway(cfg, env={TOKEN_ENV: ADMIN_TOKEN}, workers=workers)
    gw.admin_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(gw.admin_url + "/admin/status", timeout=1, trust_env=False)
            return gw
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise AssertionError("admin listener not up\n" + gw.output())
            time.sleep(0.05)


def admin_client(gw, token: str = ADMIN_TOKEN) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=gw.admin_url, headers=headers, timeout=10, trust_env=False)
