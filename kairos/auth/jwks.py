"""A JSON Web Key Set, fetched through the gateway's own async HTTP client and cached.

* keys are selected by `kid`; a constructed python-jose key is kept per (kid, alg);
* the set is refetched after `cache_seconds`, and early when a token names a `kid`
  the set does not hold -- at most once per `min_refresh_seconds`, so a client
  sending random kids cannot turn the gateway into a JWKS flooder;
* when the endpoint is down or answers garbage, the last good set stays in use;
* concurrent requests that need a refresh share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from jose import jwk
from jose.exceptions import JOSEError

from kairos.observability.logging import log_event

FETCH_TIMEOUT_S = 5.0
LOG_INTERVAL_S = 60.0


class JwksFetcher:
    def __init__(self, url: str, http: httpx.AsyncClient, cache_seconds: float, min_refresh_seconds: float) -> None:
        self.url = url
        self.http = http
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.keys: dict[str, dict[str, Any]] = {}  # kid -> JWK dict
        self.generation = 0  # bumped whenever the key set changes
        self._constructed: dict[tuple[str, str], Any] = {}
        self._fetched_at = float("-inf")  # last successful fetch (monotonic)
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self._inflight: asyncio.Future[None] | None = None
        self._last_error_log = float("-inf")

    def __repr__(self) -> str:
        return f"JwksFetcher({self.url!r}, keys={sorted(self.keys)})"

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self._fetched_at < self.cache_seconds

    async def key_for(self, kid: str | None, alg: str) -> Any | None:
        """The verification key for (kid, alg), or None when the set has none."""
        now = time.monotonic()
        if now - self._fetched_at >= self.cache_seconds and now - self._attempted_at >= self.min_refresh_seconds:
            await self.refresh()
        elif kid is not None and kid not in self.keys and now - self._attempted_at >= self.min_refresh_seconds:
            await self.refresh()
        return self._key(kid, alg)

    def _key(self, kid: str | None, alg: str) -> Any | None:
        if kid is None:
            # No kid: acceptable only when the set leaves no choice.
            candidates = [k for k, v in self.keys.items() if v.get("alg") in (None, alg)]
            if len(candidates) != 1:
                return None
            kid = candidates[0]
        data = self.keys.get(kid)
        if data is None:
            return None
        if data.get("alg") not in (None, alg) or data.get("use") not in (None, "sig"):
            return None
        cached = self._constructed.get((kid, alg))
        if cached is None:
            try:
                cached = jwk.construct(data, alg)
            except (JOSEError, ValueError, TypeError, KeyError):
                return None
            self._constructed[(kid, alg)] = cached
        return cached

    async def refresh(self) -> None:
        """Fetch the set once; concurrent callers wait for the same fetch."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        loop = asyncio.get_running_loop()
        self._inflight = loop.create_future()
        try:
            await self._fetch()
        finally:
            fut, self._inflight = self._inflight, None
            fut.set_result(None)

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            response = await self.http.get(self.url, timeout=FETCH_TIMEOUT_S, headers={"accept": "application/json"})
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            document = response.json()
            keys = {}
            for entry in document["keys"]:
                if isinstance(entry, dict) and isinstance(entry.get("kid"), str):
                    keys[entry["kid"]] = entry
                elif isinstance(entry, dict) and len(document["keys"]) == 1:
                    keys[""] = entry  # a lone key without kid
        except Exception as exc:  # noqa: BLE001 -- any failure keeps the last good set
            now = time.monotonic()
            if now - self._last_error_log >= LOG_INTERVAL_S:
                self._last_error_log = now
                log_event(
                    "jwks_fetch_failed", logging.WARNING, url=self.url,
                    error=f"{exc.__class__.__name__}: {exc}"[:300], keys_kept=len(self.keys),
                )
            return
        self._fetched_at = time.monotonic()
        if keys != self.keys:
            self.keys = keys
            self._constructed.clear()
            self.generation += 1
            log_event("jwks_updated", url=self.url, kids=sorted(keys))
