"""The admin API's models and its OpenAPI 3.1 document, generated from them.

Every operation is declared once (`Operation`): api.py serves it, `openapi()`
documents it, the property test walks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kairos import __version__
from kairos.config.models import GatewayConfig, RouterConfig


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(Out):
    error: str
    type: str
    request_id: str
    timestamp: str
    problems: list[str] | None = None


class Whoami(Out):
    name: str
    role: Literal["admin", "viewer"]


class ReloadCounts(Out):
    success: int
    error: int


class LastChange(Out):
    time: float
    actor: str
    result: str
    version: int | None = None


class LastReload(Out):
    time: float
    trigger: str
    result: Literal["success", "error"]
    problems: list[str] | None = None


class Status(Out):
    version: str
    uptime_seconds: float
    mode: Literal["single-process", "workers"]
    workers: int
    routes: int
    config_source: str | None
    config_digest: str
    reloads: ReloadCounts
    last_reload: LastReload | None = None
    last_change: LastChange | None = None


class Summary(Out):
    routes_added: list[str] = []
    routes_removed: list[str] = []
    routes_changed: list[str] = []
    settings_changed: list[str] = []


class ChangeResult(Out):
    etag: str
    version: int | None  # None: live and written, but the history could not be kept (logged)
    summary: Summary
    route_id: str | None = None


class ValidationResult(Out):
    valid: bool
    problems: list[str]


class HistoryEntry(Out):
    version: int
    time: float
    actor: str
    etag: str
    summary: dict[str, Any]


class HistoryDocument(HistoryEntry):
    document: dict[str, Any]


class RouteView(Out):
    id: str
    index: int
    router: dict[str, Any]


class BackendRoute(Out):
    id: str
    weight: int


class BackendState(Out):
    address: str
    healthy: bool
    available: bool
    drained: bool
    breaker: str
    ejected: bool
    ejected_for_s: float
    ejections: int
    in_flight: int | None
    routes: list[BackendRoute]


class Window(Out):
    seconds: float
    requests: int
    rps: float
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class RouteStats(Out):
    id: str
    external_path: str
    methods: list[str]
    windows: dict[str, Window]


class Stats(Out):
    time: float
    routes: list[RouteStats]


class PurgeResult(Out):
    removed: int
    stores: str


class MatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: str = Field(pattern=r"^[A-Za-z]{1,16}$")
    url: str = Field(min_length=1, max_length=8192)


class MatchResult(Out):
    matched: bool
    status: int | None = None
    reason: str | None = None
    route: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    upstream_path: str | None = None
    backends: list[dict[str, Any]] | None = None
    policies: dict[str, Any] | None = None


@dataclass
class Operation:
    method: str
    path: str
    handler: Any
    summary: str
    response: type[BaseModel] | None = None
    response_list: bool = False
    body: type[BaseModel] | None = None
    write: bool = False
    if_match: bool = False
    statuses: tuple[int, ...] = ()
    content_type: str = "application/json"
    extra: dict[str, Any] = field(default_factory=dict)


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    name = model.__name__
    if name not in components:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for key, value in schema.pop("$defs", {}).items():
            components.setdefault(key, value)
        components[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


ERRORS = {
    400: "malformed request", 401: "no or unknown bearer token", 403: "the token's role may not do this",
    404: "no such route, version or backend", 412: "If-Match does not match the config's current ETag",
    422: "the change does not validate (problems listed with their JSON paths)",
    428: "If-Match is required for writes", 429: "too many failed authentications from this client",
    502: "a cache store (Redis) failed",
}


def openapi(operations: list[Operation]) -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_ref = _schema(ErrorBody, components)
    _schema(GatewayConfig, components)
    _schema(RouterConfig, components)
    paths: dict[str, Any] = {}
    for op in operations:
        if op.path.startswith("/admin/ui"):
            continue
        responses: dict[str, Any] = {}
        ok = "201" if op.method == "POST" and op.path == "/admin/routes" else "200"
        if op.response is not None:
            ref = _schema(op.response, components)
            schema = {"type": "array", "items": ref} if op.response_list else ref
            responses[ok] = {"description": "OK", "content": {op.content_type: {"schema": schema}}}
        else:
            responses[ok] = {"description": "OK", "content": {op.content_type: {"schema": op.extra.get("schema", {})}}}
        for code in (401, 403, 429, *op.statuses) + ((412, 428, 422) if op.if_match else ()):
            if code == 403 and not op.write:
                continue
            responses[str(code)] = {"description": ERRORS[code], "content": {"application/json": {"schema": error_ref}}}
        entry: dict[str, Any] = {
            "operationId": op.handler.__name__,
            "summary": op.summary,
            "responses": responses,
            "x-kairos-role": "admin" if op.write else "viewer",
        }
        params = []
        for part in op.path.split("/"):
            if part.startswith("{"):
                name = part.strip("{}").split(":")[0]
                params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        if op.if_match:
            params.append({"name": "If-Match", "in": "header", "required": True, "schema": {"type": "string"},
                           "description": "the ETag of GET /admin/config"})
        params += op.extra.get("query", [])
        if params:
            entry["parameters"] = params
        body = op.extra.get("body_ref")
        if op.body is not None:
            body = _schema(op.body, components)
        if body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths.setdefault(op.path.replace(":path", ""), {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "kairos admin API", "version": __version__,
                 "description": "Bearer tokens (admin: read and write, viewer: read). See docs/admin.md."},
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
