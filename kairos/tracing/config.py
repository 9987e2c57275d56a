"""The top-level `tracing` block.

Enabling it needs the OpenTelemetry SDK (and, for `otlp_http`, its exporter),
shipped as the optional extra `kairos-gateway[otel]`: without them the config is
refused with a message naming the extra, never an ImportError at the first request.
This module imports pydantic only: kairos.config.models imports it.
"""

from __future__ import annotations

import importlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

EXTRA = "pip install 'kairos-gateway[otel]'"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("kairos", message)


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


    enabled: bool = False
    exporter: Literal["otlp_http", "console", "none"] = "otlp_http"
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "kairos"
    sampler: Literal["parent_based_ratio", "always_on", "always_off", "ratio"] = "parent_based_ratio"
    ratio: float = 0.01
    # Sent with every export (e.g. a vendor's API key): never logged, never shown.
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise problem("must be between 0.0 and 1.0")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise problem(f"'{value}' is not an http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces)")
        return value

    @model_validator(mode="after")
    def _sdk_installed(self) -> TracingConfig:
        if not self.enabled:
            return self
        if not _importable("opentelemetry.sdk.trace"):
            raise problem(f"tracing needs the OpenTelemetry SDK: {EXTRA}")
        if self.exporter == "otlp_http" and not _importable("opentelemetry.exporter.otlp.proto.http.trace_exporter"):
            raise problem(f"the otlp_http exporter needs opentelemetry-exporter-otlp-proto-http: {EXTRA}")
        return self
