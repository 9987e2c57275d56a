"""The `discovery` block: top level (the default for every route) or on a router.

`type: dns` (Envoy's STRICT_DNS): every backend host that is a DNS name is
resolved in the background and each A/AAAA address becomes a backend with the
configured port and weight. IP literals and `localhost` (RFC 6761: loopback by
definition, never asked of DNS) stay as they are.

`type: dns_srv` (router only): the backends are the SRV records of `name`,
lowest priority group only (as Kong does); the router then has no `backends`.

Without a `discovery` block nothing changes: a host name is resolved by the
operating system when a connection is opened, as before.
This module imports pydantic only: kairos.config.models imports it.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


def problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("kairos", message)


class DiscoveryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dns", "dns_srv"] = "dns"
    name: str | None = None
    refresh_ms: int = Field(5000, gt=0)
    respect_ttl: bool = False
    # None: the system's resolvers (/etc/resolv.conf).
    nameservers: list[str] | None = None
    port: int = Field(53, ge=1, le=65535)
    timeout_ms: int = Field(2000, gt=0)
    # dns_srv only: how the discovered servers are spoken to.
    scheme: Literal["http", "https"] = "http"
    # Shortest wait between two resolutions when respect_ttl follows a small TTL.
    min_refresh_ms: int = Field(1000, ge=0)

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise problem("must list at least one nameserver (or leave it out for the system's)")
            for ns in value:
                try:
                    ipaddress.ip_address(ns)
                except ValueError:
                    raise problem(f"'{ns}' is not an IP address") from None
        return value

    @model_validator(mode="after")
    def _name_for_type(self) -> DiscoveryConfig:
        if self.type == "dns_srv" and not self.name:
            raise problem("dns_srv needs 'name', the SRV record to read (e.g. _http._tcp.users.svc)")
        if self.type == "dns" and self.name is not None:
            raise problem("'name' is for dns_srv; with dns the backends' hosts are resolved")
        return self
