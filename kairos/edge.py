"""State the edge policies share across routes and across config reloads.

One per gateway process: the JWKS fetchers (one per URL), the JWT verifiers (one per
distinct `jwt` block, so the verified-token cache survives a reload that does not
change it), the in-memory rate-limit counters, and one Redis pool per URL.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx

from kairos.auth.jwks import JwksFetcher
from kairos.auth.jwt import JwtVerifier
from kairos.config.models import JwtConfig
from kairos.ratelimit import MemoryCounters, MemoryTokenBucket, RedisBackend

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url_for(configured: str | None) -> str:
    return configured or os.environ.get("KAIROS_REDIS_URL") or DEFAULT_REDIS_URL


class EdgeState:
    def __init__(self) -> None:
        self.jwks: dict[tuple[str, int, int], JwksFetcher] = {}
        self.verifiers: dict[str, JwtVerifier] = {}
        self.memory = MemoryCounters()
        self.buckets: dict[tuple[Any, ...], MemoryTokenBucket] = {}
        self.redis: dict[str, RedisBackend] = {}
        self._used: set[Any] = set()

    # ------------------------------------------------------------------ compile time
    def verifier(self, config: JwtConfig, http: httpx.AsyncClient) -> JwtVerifier:
        """The verifier for a `jwt` block (`http` fetches its JWKS), shared while the block is unchanged."""
        secret = config.secret.get_secret_value() if config.secret is not None else ""
        ident = hashlib.sha256((config.model_dump_json() + "\0" + secret).encode()).hexdigest()
        verifier = self.verifiers.get(ident)
        if verifier is None:
            fetcher = None
            if config.jwks_url:
                jkey = (config.jwks_url, config.jwks_cache_seconds, config.jwks_min_refresh_seconds)
                fetcher = self.jwks.get(jkey)
                if fetcher is None:
                    fetcher = self.jwks[jkey] = JwksFetcher(
                        config.jwks_url, http, config.jwks_cache_seconds,
                        config.jwks_min_refresh_seconds,
                    )
                self._used.add(("jwks", jkey))
            verifier = self.verifiers[ident] = JwtVerifier(config, fetcher)
        elif verifier.jwks is not None:
            j = verifier.jwks
            self._used.add(("jwks", (j.url, j.cache_seconds, j.min_refresh_seconds)))
        self._used.add(("verifier", ident))
        return verifier

    def token_bucket(self, ident: tuple[Any, ...], capacity: int, initial: int, rate: float) -> MemoryTokenBucket:
        bucket = self.buckets.get(ident)
        if bucket is None:
            bucket = self.buckets[ident] = MemoryTokenBucket(capacity, initial, rate)
        self._used.add(("bucket", ident))
        return bucket

    def redis_backend(self, url: str) -> RedisBackend:
        backend = self.redis.get(url)
        if backend is None:
            backend = self.redis[url] = RedisBackend(url)
        self._used.add(("redis", url))
        return backend

    def prune(self, keep_all: bool = False) -> list[RedisBackend]:
        """After a compile: forget what the new runtime no longer uses; returns Redis pools to close.

        keep_all (a compile that failed): only reset the bookkeeping.
        """
        used, self._used = self._used, set()
        if keep_all:
            return []
        self.verifiers = {k: v for k, v in self.verifiers.items() if ("verifier", k) in used}
        self.jwks = {k: v for k, v in self.jwks.items() if ("jwks", k) in used}
        self.buckets = {k: v for k, v in self.buckets.items() if ("bucket", k) in used}
        stale = [b for url, b in self.redis.items() if ("redis", url) not in used]
        self.redis = {url: b for url, b in self.redis.items() if ("redis", url) in used}
        return stale

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # Fetch key sets up front so the first protected request does not wait for them.
        for fetcher in list(self.jwks.values()):
            await fetcher.refresh()

    async def aclose(self) -> None:
        for backend in list(self.redis.values()):
            await backend.aclose()
        self.redis.clear()
        self.memory.reset()
