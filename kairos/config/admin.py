"""The `admin` block: the admin listener (API + web console), off by default.

Tokens never stand in the file in clear: each is either the SHA-256 of the token
(`token_sha256`, hex) or the name of an environment variable holding it
(`token_env`). The checks that need only the file are here (so `kairos validate`
reports them with their JSON paths); the environment is read when the listener
starts (`kairos.admin.tokens.TokenTable.from_config`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kairos.config.block import Block, problem

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AdminToken(Block):
    name: str
    role: Literal["admin", "viewer"]
    token_sha256: str | None = None
    token_env: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOKEN_NAME.match(value):
            raise problem("letters, digits and . _ @ - only (1-64 characters)")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise problem("must be the token's SHA-256 as 64 hex digits (printf %s TOKEN | sha256sum)")
        return value.lower() if value else value

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise problem("must be an environment variable name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AdminToken:
        if (self.token_sha256 is None) == (self.token_env is None):
            raise problem("give exactly one of 'token_sha256' or 'token_env' (never the token itself)")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminConfig(Block):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 5901
    tokens: list[AdminToken] = Field(default_factory=list)
    # Acknowledges that a non-loopback listener sits behind TLS (a terminating proxy).
    public: bool = False
    history_size: int = 20

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise problem("must be 1-65535")
        return value

    @field_validator("history_size")
    @classmethod
    def _history(cls, value: int) -> int:
        if not 1 <= value <= 1000:
            raise problem("must be 1-1000")
        return value

    @model_validator(mode="after")
    def _refusals(self) -> AdminConfig:
        if not self.enabled:
            return self
        if not self.tokens:
            raise problem("enabled without any token: add tokens [{name, role, token_sha256 | token_env}]")
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise problem("token names must be unique")
        if not is_loopback(self.host) and not self.public:
            raise problem(
                f"host '{self.host}' is not a loopback address: put TLS in front of the admin listener "
                "and acknowledge it with \"public\": true"
            )
        return self
