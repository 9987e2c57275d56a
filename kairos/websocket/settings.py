"""The `websocket` block of a websocket route (a top-level block is the default for every websocket route).

    "websocket": {
      "idle_timeout_ms": 0,            no frame either way this long -> 1001 to both sides (0 = never)
      "max_message_bytes": 1048576,    a bigger message -> 1009 to its sender, 1001 to the other side
      "max_connections": 0,            open connections on the route beyond which upgrades get 503 (0 = no limit)
      "compression": false,            permessage-deflate towards the client
      "token_from": ["header"],        where auth_required looks for the JWT: header, subprotocol, query:<name>
      "allowed_origins": null,         Origin allow-list (null: the route's CORS origins, if it has a CORS block)
      "connect_timeout_ms": null,      the upstream handshake's deadline (null: the route's connect_timeout_ms)
      "close_timeout_ms": 2000         how long a closing handshake may take before the socket is dropped
    }

Kept apart from config/models.py's other blocks (which import it) so the config does not
import the relay.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from kairos.config.origins import check_origins

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
_QUERY = re.compile(r"^query:[A-Za-z0-9_.\-]+$")
_SOURCES = "header, subprotocol, query:<name>"


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("kairos", message)


def _positive(value: int) -> int:
    if value <= 0:
        raise _problem("must be greater than 0")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise _problem("must not be negative")
    return value


def _token_sources(value: list[str]) -> list[str]:
    if not value:
        raise _problem(f"must name at least one source ({_SOURCES})")
    for source in value:
        if source not in ("header", "subprotocol") and not _QUERY.match(source):
            raise _problem(f"unknown token source '{source}' (one of {_SOURCES})")
    return value


def _origins(value: list[str] | None) -> list[str] | None:
    return None if value is None else check_origins(value)


Positive = Annotated[int, AfterValidator(_positive)]
NonNegative = Annotated[int, AfterValidator(_non_negative)]


class WebSocketConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_timeout_ms: NonNegative = 0
    max_message_bytes: Positive = DEFAULT_MAX_MESSAGE_BYTES
    max_connections: NonNegative = 0
    compression: bool = False
    token_from: Annotated[list[str], AfterValidator(_token_sources)] = Field(default_factory=lambda: ["header"])
    allowed_origins: Annotated[list[str] | None, AfterValidator(_origins)] = None
    connect_timeout_ms: Positive | None = None
    close_timeout_ms: Positive = 2000

    @property
    def query_token(self) -> str | None:
        """The query parameter that may carry the token (`query:<name>`), if any."""
        for source in self.token_from:
            if source.startswith("query:"):
                return source[6:]
        return None
