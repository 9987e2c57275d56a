"""The configuration schema: kairos-rs's JSON plus the optional keys kairos adds.

Placement rule: a policy key at the top level is the default for every route,
and the same key on a router overrides it for that route (`None` on a router
means "inherit"). Everything is frozen: a compiled config is never mutated,
a reload builds a new one.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kairos.config.block import NonNegativeFloat, NonNegativeInt, PositiveInt
from kairos.config.cache import CacheConfig
from kairos.config.compression import CompressionConfig
from kairos.config.admin import AdminConfig
from kairos.config.connection_pool import ConnectionPoolConfig
from kairos.config.origins import check_origins
from kairos.discovery.config import DiscoveryConfig
from kairos.routing import PathTemplate, PatternError, parse_pattern
from kairos.transform.config import RequestTransformation, ResponseTransformation
from kairos.tracing.config import TracingConfig
from kairos.websocket.settings import WebSocketConfig

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
STRATEGIES = ("round_robin", "weighted", "least_connections", "random", "least_request", "ip_hash")
# kairos-rs also declares "ftp" and "dns"; a gateway for HTTP cannot honour them.
PROTOCOLS = ("http", "https", "websocket")
UNSUPPORTED_PROTOCOLS = ("ftp", "dns", "tcp", "udp", "grpc")
BACKEND_SCHEMES = ("http", "https", "ws", "wss")
RESERVED_PATHS = ("/health", "/live", "/ready", "/metrics")
JWT_ALGORITHMS = (
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "ES256", "ES384", "ES512",
    "PS256", "PS384", "PS512",
)
RATE_LIMIT_STRATEGIES = ("PerIP", "PerUser", "PerRoute", "PerIPAndRoute", "PerUserAndRoute")
WINDOW_TYPES = ("FixedWindow", "SlidingWindow", "TokenBucket")


def problem(message: str) -> PydanticCustomError:
    """A validation error whose text is shown to the user as is."""
    return PydanticCustomError("kairos", message)


def one_of(value: str, choices: tuple[str, ...], what: str) -> str:
    """`value` if it is one of `choices`, else a problem naming them all."""
    if value not in choices:
        raise problem(f"unknown {what} '{value}' (one of {', '.join(choices)})")
    return value


def _cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise problem(f"'{value}' is not an IP address or CIDR network") from None
    return value


Cidr = Annotated[str, AfterValidator(_cidr)]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise problem("must be 1-65535")
    return value


Port = Annotated[int, AfterValidator(_port)]




def _status(value: int) -> int:
    if not 100 <= value <= 599:
        raise problem(f"{value} is not an HTTP status code (100-599)")
    return value


StatusCode = Annotated[int, AfterValidator(_status)]


class Model(BaseModel):
    """Base for every block: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Model):
    host: str = "0.0.0.0"
    port: Port = 5900
    trusted_proxies: list[Cidr] = Field(default_factory=list)
    shutdown_timeout_s: NonNegativeFloat = 30.0
    shutdown_delay_s: NonNegativeFloat = 0.0
    # Request header limits (431 beyond them; 0 = no limit): Envoy's and nginx's usual sizes.
    max_headers: NonNegativeInt = 100
    max_header_bytes: NonNegativeInt = 32768
    # Upstream response head limits (502 beyond them).
    max_upstream_header_bytes: PositiveInt = 65536
    max_upstream_headers: PositiveInt = 100
    # A request head (line + headers) must arrive within this, or the connection is closed
    # (nginx's client_header_timeout); 0 = no limit. Bodies and idle keep-alive: separate.
    request_header_timeout_ms: NonNegativeInt = 10000


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    access_log: bool = True

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class JwtConfig(Model):
    secret: SecretStr | None = None
    issuer: str | None = None
    audience: str | None = None
    required_claims: list[str] = Field(default_factory=list)
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"])
    public_key: str | None = None
    jwks_url: str | None = None
    jwks_cache_seconds: PositiveInt = 300
    jwks_min_refresh_seconds: NonNegativeInt = 30
    leeway_seconds: NonNegativeInt = 30
    forward_claims: dict[str, str] = Field(default_factory=dict)
    forward_token: bool = True

    @field_validator("secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise problem("must be at least 32 characters (an HS256 key shorter than that can be brute-forced)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        if not value:
            raise problem("must name at least one algorithm")
        for alg in value:
            if alg not in JWT_ALGORITHMS:
                if alg.lower() == "none":
                    raise problem("'none' is never accepted: unsigned tokens prove nothing")
                raise problem(f"unknown algorithm '{alg}' (supported: {', '.join(JWT_ALGORITHMS)})")
        return value

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> JwtConfig:
        wants_hmac = any(a.startswith("HS") for a in self.algorithms)
        wants_public = any(not a.startswith("HS") for a in self.algorithms)
        if wants_hmac and self.secret is None:
            raise problem("HS* algorithms need 'secret'")
        if wants_public and self.public_key is None and self.jwks_url is None:
            raise problem("RS/ES/PS algorithms need 'public_key' or 'jwks_url'")
        return self


class PerHeader(Model):
    PerHeader: str


class RateLimitConfig(Model):
    strategy: str | PerHeader = "PerIP"
    requests_per_window: PositiveInt = 100
    window_duration: PositiveInt = 60
    burst_allowance: NonNegativeInt = 0
    window_type: str = "SlidingWindow"
    enable_redis: bool = False
    redis_key_prefix: str = "kairos_rl"
    redis_url: str | None = None
    on_redis_error: Literal["allow", "deny"] = "allow"

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in RATE_LIMIT_STRATEGIES:
            raise problem(
                f"unknown strategy '{value}' (one of {', '.join(RATE_LIMIT_STRATEGIES)}, or {{\"PerHeader\": \"<name>\"}})"
            )
        return value

    @field_validator("window_type")
    @classmethod
    def _window_type(cls, value: str) -> str:
        return one_of(value, WINDOW_TYPES, "window_type")


class RetryConfig(Model):
    max_retries: NonNegativeInt = 3
    initial_backoff_ms: NonNegativeInt = 100
    max_backoff_ms: NonNegativeInt = 5000
    backoff_multiplier: float = 2.0
    retry_on_status_codes: list[StatusCode] = Field(default_factory=lambda: [502, 503, 504])
    retry_on_connection_error: bool = True
    jitter: Literal["full", "none"] = "full"
    retry_non_idempotent: bool = False
    retry_buffer_bytes: NonNegativeInt = 65536
    per_try_timeout_ms: PositiveInt | None = None
    budget_percent: NonNegativeFloat = 20.0
    min_retry_concurrency: NonNegativeInt = 3

    @field_validator("backoff_multiplier")
    @classmethod
    def _multiplier(cls, value: float) -> float:
        if value < 1.0:
            raise problem("must be at least 1.0")
        return value


class CircuitBreakerConfig(Model):
    enabled: bool = True
    failure_threshold: PositiveInt = 5
    success_threshold: PositiveInt = 3
    reset_timeout_ms: PositiveInt = 30000
    failure_status_codes: list[StatusCode] = Field(default_factory=lambda: [502, 503, 504])
    half_open_max_requests: PositiveInt = 1


_STATUS_RANGE = re.compile(r"^([1-5]\d\d)-([1-5]\d\d)$")


class HealthCheckConfig(Model):
    path: str | None = None
    interval_ms: PositiveInt = 5000
    timeout_ms: PositiveInt = 1000
    unhealthy_threshold: PositiveInt = 3
    healthy_threshold: PositiveInt = 2
    expected_statuses: list[int | str] = Field(default_factory=lambda: ["200-399"])

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise problem("must start with '/'")
        return value

    @field_validator("expected_statuses")
    @classmethod
    def _statuses(cls, value: list[int | str]) -> list[int | str]:
        for item in value:
            if isinstance(item, int):
                _status(item)
            elif not (m := _STATUS_RANGE.match(item)) or int(m.group(1)) > int(m.group(2)):
                raise problem(f"'{item}' is neither a status code nor a range like '200-399'")
        return value

    def status_ranges(self) -> tuple[tuple[int, int], ...]:
        ranges = []
        for item in self.expected_statuses:
            if isinstance(item, int):
                ranges.append((item, item))
            else:
                lo, hi = item.split("-")
                ranges.append((int(lo), int(hi)))
        return tuple(ranges)


class OutlierDetectionConfig(Model):
    consecutive_failures: PositiveInt = 5
    base_ejection_ms: PositiveInt = 30000
    max_ejection_ms: PositiveInt = 300000
    max_ejection_percent: NonNegativeInt = 50

    @field_validator("max_ejection_percent")
    @classmethod
    def _percent(cls, value: int) -> int:
        if value > 100:
            raise problem("must be 0-100")
        return value


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")


class SecurityHeadersConfig(Model):
    """`headers` overrides the defaults by name; a `null` value switches one off."""

    enabled: bool = True
    headers: dict[str, str | None] = Field(default_factory=dict)
    hsts: str | None = "max-age=31536000; includeSubDomains"
    override_upstream: bool = False

    @field_validator("headers")
    @classmethod
    def _header_syntax(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for name, v in value.items():
            if not _TOKEN.match(name):
                raise problem(f"'{name}' is not a valid header name")
            if name.lower() == "strict-transport-security":
                raise problem("set Strict-Transport-Security with the 'hsts' key (it is sent over HTTPS only)")
            if v is not None and not _FIELD_VALUE.match(v):
                raise problem(f"the value of '{name}' contains control characters")
        return value

    @field_validator("hsts")
    @classmethod
    def _hsts_syntax(cls, value: str | None) -> str | None:
        if value is not None and not _FIELD_VALUE.match(value):
            raise problem("contains control characters")
        return value


class CorsConfig(Model):
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_methods: list[str] = Field(default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    allowed_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: NonNegativeInt = 600

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return check_origins(value)

    @field_validator("allowed_methods")
    @classmethod
    def _cors_methods(cls, value: list[str]) -> list[str]:
        return _methods(value)

    @field_validator("allowed_headers", "expose_headers")
    @classmethod
    def _cors_headers(cls, value: list[str]) -> list[str]:
        for name in value:
            if name != "*" and not _TOKEN.match(name):
                raise problem(f"'{name}' is not a valid header name")
        return value

    @model_validator(mode="after")
    def _wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allowed_origins:
            raise problem(
                "allowed_origins '*' cannot be combined with allow_credentials: browsers refuse it; list the origins"
            )
        return self


def _methods(value: list[str]) -> list[str]:
    if not value:
        raise problem("must list at least one method")
    return [one_of(method.upper(), HTTP_METHODS, "method") for method in value]


def _plain_ascii(value: str, what: str) -> None:
    """Refuse what could never be written into an HTTP/1.1 request line or Host header."""
    if not value.isascii() or any(c <= " " or c == "\x7f" for c in value):
        raise problem(f"{what} {value!r} has a control character, a space or a non-ASCII character"
                      " (percent-encode paths; write IDN hosts in their xn-- form)")


def _backend_host(value: str) -> str:
    _plain_ascii(value, "host")
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise problem(f"'{value}' has no scheme: write it as http://{value}")
    if scheme.lower() not in BACKEND_SCHEMES:
        raise problem(f"scheme '{scheme}' is not supported (one of {', '.join(BACKEND_SCHEMES)})")
    if not rest or "/" in rest.rstrip("/") or "?" in rest or "#" in rest:
        raise problem(f"'{value}' must be a scheme and a host only, e.g. http://10.0.0.5 (the port goes in 'port')")
    if ":" in rest.strip("[]").rstrip("/") and not rest.startswith("["):
        raise problem(f"'{value}' carries a port: put it in 'port'")
    return value.rstrip("/")


BackendHost = Annotated[str, AfterValidator(_backend_host)]


class BackendConfig(Model):
    host: BackendHost
    port: Port
    weight: PositiveInt = 1
    health_check_path: str | None = None

    @field_validator("health_check_path")
    @classmethod
    def _hc_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise problem("must start with '/'")
        return value

    @property
    def address(self) -> str:
        """`scheme://host:port`, the backend's identity across reloads."""
        return f"{self.host}:{self.port}"


_HASH_ON = re.compile(r"^(ip|(header|cookie|claim):[A-Za-z0-9_.\-]+)$")


_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


_HTTP_BODY_BLOCKS = ("compression", "cache", "request_transformation", "response_transformation")


class RouterConfig(Model):
    # Optional id for the admin API (/admin/routes/{name}); see docs/admin.md for the derived id.
    name: str | None = None
    external_path: str
    internal_path: str
    methods: Annotated[list[str], AfterValidator(_methods)]
    auth_required: bool = False
    protocol: str = "http"
    load_balancing_strategy: str = "round_robin"
    retry: RetryConfig | None = None
    host: BackendHost | None = None
    port: Port | None = None
    backends: list[BackendConfig] | None = None
    # Policy overrides (None: inherit the top-level value).
    timeout_ms: PositiveInt | None = None
    connect_timeout_ms: PositiveInt | None = None
    read_timeout_ms: NonNegativeInt | None = None
    max_body_size: NonNegativeInt | None = None
    security_headers: SecurityHeadersConfig | None = None
    cors: CorsConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    ip_allow: list[Cidr] | None = None
    ip_deny: list[Cidr] | None = None
    rate_limit: RateLimitConfig | None = None
    connection_pool: ConnectionPoolConfig | None = None
    compression: CompressionConfig | None = None
    cache: CacheConfig | None = None
    # Router-only keys.
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    panic_mode: bool = False
    hash_on: str | None = None
    preserve_host: bool = False
    request_transformation: RequestTransformation | None = None
    response_transformation: ResponseTransformation | None = None
    discovery: DiscoveryConfig | None = None
    websocket: WebSocketConfig | None = None  # websocket routes only; overrides the top-level block

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _ROUTE_NAME.match(value):
            raise problem("letters, digits and . _ - only, starting with a letter or digit (1-64 characters)")
        return value

    @field_validator("external_path")
    @classmethod
    def _external(cls, value: str) -> str:
        try:
            parse_pattern(value)
        except PatternError as exc:
            raise problem(str(exc)) from None
        return value

    @field_validator("internal_path")
    @classmethod
    def _internal(cls, value: str, info: ValidationInfo) -> str:
        _plain_ascii(value, "internal_path")
        external = info.data.get("external_path")
        if external is not None:  # None: external_path itself is invalid and reported
            try:
                PathTemplate(value, parse_pattern(external).param_names)
            except PatternError as exc:
                raise problem(str(exc)) from None
        return value

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        v = value.lower()
        if v in UNSUPPORTED_PROTOCOLS:
            raise problem(f"protocol '{value}' is not supported: kairos proxies HTTP (http, https, websocket)")
        one_of(v, PROTOCOLS, "protocol")
        return v

    @field_validator("load_balancing_strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        return one_of(value, STRATEGIES, "strategy")

    @field_validator("hash_on")
    @classmethod
    def _hash_on(cls, value: str | None) -> str | None:
        if value is not None and not _HASH_ON.match(value):
            raise problem(f"'{value}' is not one of ip, header:<name>, cookie:<name>, claim:<name>")
        return value

    @model_validator(mode="after")
    def _backend_form(self) -> RouterConfig:
        legacy = self.host is not None or self.port is not None
        if self.discovery is not None and self.discovery.type == "dns_srv":
            if legacy or self.backends is not None:
                raise problem("with discovery type dns_srv the backends come from SRV records: remove 'backends'/'host'")
            return self
        if legacy and self.backends is not None:
            raise problem("give either 'host'+'port' or 'backends', not both")
        if not legacy and not self.backends:
            raise problem("needs 'backends' (or the legacy 'host' and 'port')")
        if legacy and (self.host is None or self.port is None):
            raise problem("the legacy form needs both 'host' and 'port'")
        if self.protocol == "websocket" and "GET" not in self.methods:
            raise problem("a websocket route must allow GET (the upgrade is a GET request)")
        if self.websocket is not None and self.protocol != "websocket":
            raise problem("a 'websocket' block needs \"protocol\": \"websocket\"")
        if self.protocol == "websocket":
            # Layers that read or rewrite HTTP bodies are not in a websocket route's chain (layers.py).
            unused = [k for k in _HTTP_BODY_BLOCKS if getattr(self, k) is not None]
            if unused:
                raise problem(f"{', '.join(unused)}: not applied on a websocket route (messages are relayed as they are)")
        return self

    @property
    def backend_list(self) -> tuple[BackendConfig, ...]:
        """The backends, with the legacy `host`+`port` form as a single backend."""
        if self.backends is not None:
            return tuple(self.backends)
        if self.host is None:
            return ()  # dns_srv: discovered
        return (BackendConfig(host=self.host, port=self.port),)  # type: ignore[arg-type]


class GatewayConfig(Model):
    version: int = 1
    jwt: JwtConfig | None = None
    rate_limit: RateLimitConfig | None = None
    routers: list[RouterConfig] = Field(default_factory=list)
    server: ServerConfig = Field(default_factory=ServerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # Policy defaults for every route.
    timeout_ms: PositiveInt = 30000
    connect_timeout_ms: PositiveInt = 5000
    # Longest silence allowed between two pieces of a response body (nginx's
    # proxy_read_timeout); 0 = none, e.g. for event streams without heartbeats.
    read_timeout_ms: NonNegativeInt = 60000
    max_body_size: NonNegativeInt = 10 * 1024 * 1024
    security_headers: SecurityHeadersConfig = Field(default_factory=SecurityHeadersConfig)
    cors: CorsConfig | None = None
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    ip_allow: list[Cidr] | None = None
    ip_deny: list[Cidr] | None = None
    websocket: WebSocketConfig = Field(default_factory=WebSocketConfig)
    connection_pool: ConnectionPoolConfig = Field(default_factory=ConnectionPoolConfig)
    compression: CompressionConfig | None = None
    cache: CacheConfig | None = None
    admin: AdminConfig = Field(default_factory=AdminConfig)
    discovery: DiscoveryConfig | None = None
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @field_validator("discovery")
    @classmethod
    def _discovery_default(cls, value: DiscoveryConfig | None) -> DiscoveryConfig | None:
        if value is not None and value.type == "dns_srv":
            raise problem("dns_srv names one service: set it on the router that uses it")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != 1:
            raise problem(f"unsupported config version {value}: this kairos reads version 1")
        return value

    def policy(self, router: RouterConfig, name: str) -> Any:
        """The effective value of policy key `name` for `router` (its own, else the default)."""
        value = getattr(router, name)
        return getattr(self, name) if value is None else value
