"""Bearer tokens and the throttle on repeated failures.

Only SHA-256 digests are kept in memory; a presented token is hashed and compared
with every configured digest by `hmac.compare_digest` (no early exit on the
first match, so the time does not tell which token came close).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kairos.config.admin import AdminConfig


class TokenSetupError(Exception):
    """A token's environment variable is missing or empty: the listener must not start."""


@dataclass(frozen=True)
class Identity:
    name: str
    role: str  # "admin" | "viewer"

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


class TokenTable:
    def __init__(self, entries: list[tuple[bytes, Identity]]) -> None:
        self.entries = entries

    @classmethod
    def from_config(cls, config: AdminConfig, environ: Mapping[str, str] = os.environ) -> TokenTable:
        entries: list[tuple[bytes, Identity]] = []
        problems = []
        for i, t in enumerate(config.tokens):
            if t.token_env is not None:
                value = environ.get(t.token_env, "")
                if not value:
                    problems.append(f"admin.tokens[{i}].token_env: environment variable {t.token_env} is not set or empty")
                    continue
                if len(value) < 16:
                    problems.append(f"admin.tokens[{i}].token_env: the token in {t.token_env} is shorter than 16 characters")
                    continue
                digest = hashlib.sha256(value.encode()).digest()
            else:
                digest = bytes.fromhex(t.token_sha256 or "")
            entries.append((digest, Identity(t.name, t.role)))
        if problems:
            raise TokenSetupError("; ".join(problems))
        return cls(entries)

    def identify(self, token: str) -> Identity | None:
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for digest, identity in self.entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = identity
        return found


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class FailureThrottle:
    """After `limit` failed authentications from one client within `window_s`, that client is
    refused (429) for `block_s`, whatever it presents; a success clears its count."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, block_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.block_s = block_s
        self.clock = clock
        self.failures: dict[str, list[float]] = {}
        self.blocked: dict[str, float] = {}

    def retry_after(self, client: str) -> float:
        """Seconds this client must still wait (0: may try)."""
        until = self.blocked.get(client)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self.blocked[client]
            return 0.0
        return left

    def failed(self, client: str) -> None:
        now = self.clock()
        recent = [t for t in self.failures.get(client, []) if now - t < self.window_s]
        recent.append(now)
        if len(recent) >= self.limit:
            self.blocked[client] = now + self.block_s
            recent = []
        self.failures[client] = recent
        if len(self.failures) > 10000:  # bounded: forget the oldest clients
            for key in list(self.failures)[:5000]:
                del self.failures[key]

    def succeeded(self, client: str) -> None:
        self.failures.pop(client, None)
