"""The `compression` block: kairos-rs's keys, plus `br` and `zstd` as algorithm names.

Top-level default, router override (a router's block replaces the top-level one).
Kept out of models.py so the feature owns its schema; it depends on pydantic (and config.block) only,
so models.py can import it without a loop.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from kairos.config.block import Block, NonNegativeInt, problem

# kairos-rs's names and kairos's additions -> the HTTP content-coding token.
ALGORITHMS = {"gzip": "gzip", "brotli": "br", "br": "br", "deflate": "deflate", "zstd": "zstd"}
DEFAULT_CONTENT_TYPES = [
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/xml",
    "application/*+xml",
    "image/svg+xml",
]
_MEDIA_RANGE = re.compile(r"^([a-z0-9!#$&^_.+\-]+|\*)/([a-z0-9!#$&^_.+\-*]+)$")


class CompressionConfig(Block):
    enabled: bool = False
    level: int = 6
    min_size: NonNegativeInt = 1024
    content_types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))
    algorithms: list[str] = Field(default_factory=lambda: ["gzip"])

    @field_validator("level")
    @classmethod
    def _level(cls, value: int) -> int:
        if not 1 <= value <= 9:
            raise problem("must be 1-9 (mapped onto each codec's own range)")
        return value

    @field_validator("content_types")
    @classmethod
    def _content_types(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            media = item.strip().lower()
            if not _MEDIA_RANGE.match(media) or media.startswith("*/") and media != "*/*":
                raise problem(f"'{item}' is not a media type or pattern like text/* or application/*+json")
            out.append(media)
        return out

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise problem("must name at least one algorithm")
        for name in value:
            if name.lower() not in ALGORITHMS:
                raise problem(f"unknown algorithm '{name}' (one of {', '.join(ALGORITHMS)})")
        return [name.lower() for name in value]

    def codings(self) -> tuple[str, ...]:
        """The configured algorithms as content-coding tokens, in order, without repeats."""
        out: list[str] = []
        for name in self.algorithms:
            token = ALGORITHMS[name]
            if token not in out:
                out.append(token)
        return tuple(out)
