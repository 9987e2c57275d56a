"""The `cache` block: kairos-rs's `{enabled, ttl_secs, max_size}` plus kairos's keys.

Top-level default, router override (a router's block replaces the top-level one).
Depends on pydantic (and config.block) only, so models.py imports it without a loop.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from kairos.config.block import Block, NonNegativeInt, PositiveInt, problem

_KEY_PART = re.compile(r"^header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class CacheKeyConfig(Block):
    """What besides the route and the URL tells entries apart."""

    # `header:<name>`: the request header's value becomes part of the key (e.g. a tenant id).
    extra: list[str] = Field(default_factory=list)
    # Query parameters left out of the key (tracking noise like utm_source); `*` at the end is a prefix.
    query_ignore: list[str] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        for part in value:
            if not _KEY_PART.match(part):
                raise problem(f"'{part}' is not a key part (write header:<name>)")
        return [part.lower() for part in value]

    @field_validator("query_ignore")
    @classmethod
    def _query_ignore(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or "*" in name[:-1]:
                raise problem(f"'{name}' is not a query parameter name (a trailing * makes it a prefix)")
        return value


class CacheConfig(Block):
    enabled: bool = False
    ttl_secs: NonNegativeInt = 60
    max_size: PositiveInt = 1024 * 1024
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    redis_key_prefix: str = "kairos_cache:"
    memory_bytes: PositiveInt = 64 * 1024 * 1024
    stale_while_revalidate_secs: NonNegativeInt = 0
    stale_if_error_secs: NonNegativeInt = 0
    key: CacheKeyConfig = Field(default_factory=CacheKeyConfig)
    cache_authenticated: bool = False
    # How long concurrent misses wait for the one request that fetches the entry.
    coalesce_timeout_ms: PositiveInt = 5000

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise problem("must be a redis://, rediss:// or unix:// URL")
        return value
