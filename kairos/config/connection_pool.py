"""The `connection_pool` block: per-origin upstream connection limits, as Envoy's cluster thresholds.

Top-level default, router override (the whole block, like every policy key).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConnectionPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Connections open to one origin (idle, busy or connecting).
    max_connections: int = Field(1024, ge=1)
    # Requests queued for a connection beyond that; more are refused at once (503 upstream_overloaded).
    max_pending: int = Field(1024, ge=0)
    # Idle keep-alive connections kept per origin.
    max_idle: int = Field(128, ge=0)
    # An idle connection is closed this long after its last use (a timer: no traffic needed).
    # Longer than many upstreams' own idle timeout (uvicorn: 5 s) on purpose: the pool drops
    # a connection the moment the upstream closes it, and checks it again before reuse.
    idle_timeout_ms: int = Field(60000, ge=1)
    # Exchanges per connection before it is closed (0: unlimited).
    max_requests_per_connection: int = Field(0, ge=0)
