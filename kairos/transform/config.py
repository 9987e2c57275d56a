"""The `request_transformation` / `response_transformation` router blocks (kairos-rs's schema plus kairos's keys).

Everything that can be checked without the route is checked here, with the
item's JSON path: actions, header names, regexes, replacements, templates,
JSON Pointers, conditions. What needs the route (`{path.<param>}` names,
`{claim.*}` only with `auth_required`) is checked by `route_problems`.

This module imports pydantic only: kairos.config.models imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kairos.transform.condition import ConditionError, compile_condition
from kairos.transform.jsonpointer import PointerError, parse_pointer
from kairos.transform.rustre import RegexError, compile_rust
from kairos.transform.template import GROUP, Template, TemplateError, json_templates

ACTIONS = ("remove", "rename", "replace", "set", "add", "append")  # also the order they run in
MAX_JSON_BODY = 1024 * 1024

# Never targets of a header edit: framing and connection management belong to the gateway.
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "proxy-authenticate", "proxy-authorization")
FRAMING = ("content-length", "transfer-encoding")
# Request headers the gateway sets itself after the transformation (see docs/transformation.md).
SET_BY_GATEWAY = ("host", "x-request-id", "x-forwarded-proto", "x-forwarded-host")
SET_BY_SERVER = ("server", "date")  # response headers uvicorn writes (kairos.proxy.exchange)

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("kairos", message)


def _compiles(value: Any, compile: Callable[[Any], Any], error: type[Exception]) -> Any:
    """`value` if `compile(value)` accepts it (None passes), else its message as the problem."""
    if value is not None:
        try:
            compile(value)
        except error as exc:
            raise _problem(str(exc)) from None
    return value


def _template(text: str | None, *, groups: bool = False) -> str | None:
    return _compiles(text, lambda t: Template(t, groups=groups), TemplateError)


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Edit(_Block):
    """One header or query-parameter edit."""

    action: str
    name: str
    value: str | None = None
    pattern: str | None = None
    replacement: str | None = None
    to: str | None = None

    @field_validator("action")
    @classmethod
    def _action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise _problem(f"unknown action '{value}' (one of {', '.join(ACTIONS)})")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: str | None) -> str | None:
        return _template(value)

    @field_validator("replacement")
    @classmethod
    def _replacement(cls, value: str | None) -> str | None:
        return _template(value, groups=True)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        return _compiles(value, compile_rust, RegexError)

    @model_validator(mode="after")
    def _complete(self) -> _Edit:
        self.check_name(self.name)
        action = self.action
        if action in ("add", "set", "append") and self.value is None:
            raise _problem(f"'{action}' needs a 'value'")
        if action == "rename":
            if self.to is None:
                raise _problem("'rename' needs 'to' (the new name)")
            self.check_name(self.to)
        if action == "replace":
            if (self.pattern is None) != (self.replacement is None):
                raise _problem("'replace' with a regex needs both 'pattern' and 'replacement'")
            if self.pattern is None and self.value is None:
                raise _problem("'replace' needs 'pattern' and 'replacement' (regex) or 'value' (when present)")
        return self

    def check_name(self, name: str) -> None:
        if not name:
            raise _problem("'name' must not be empty")

    def templates(self) -> list[tuple[str, Template]]:
        out = []
        if self.value is not None:
            out.append(("value", Template(self.value)))
        if self.replacement is not None:
            out.append(("replacement", Template(self.replacement, groups=True)))
        return out


class _HeaderEdit(_Edit):
    FORBIDDEN: ClassVar[tuple[str, ...]] = ()

    @field_validator("value", "replacement")
    @classmethod
    def _no_line_breaks(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value or "\0" in value):
            raise _problem("a header value cannot contain CR, LF or NUL")
        return value

    def check_name(self, name: str) -> None:
        if not name or not set(name) <= _TOKEN_CHARS:
            raise _problem(f"'{name}' is not a valid header name")
        low = name.lower()
        if low in HOP_BY_HOP or low in FRAMING:
            raise _problem(f"'{name}' cannot be transformed: hop-by-hop and framing headers belong to the gateway")
        if low in type(self).FORBIDDEN:
            raise _problem(
                f"'{name}' cannot be transformed on requests: the gateway sets it after the transformation "
                "(Host follows preserve_host)"
            )


class RequestHeaderEdit(_HeaderEdit):
    FORBIDDEN: ClassVar[tuple[str, ...]] = SET_BY_GATEWAY


class ResponseHeaderEdit(_HeaderEdit):
    def check_name(self, name: str) -> None:
        super().check_name(name)
        # `remove Server` (kairos-rs's own example) stays valid: the upstream's is never relayed anyway.
        if name.lower() in SET_BY_SERVER and self.action != "remove":
            raise _problem(
                f"'{name}' cannot be set on responses: the server in front of the client writes its own "
                "Server and Date (the upstream's are never relayed)"
            )


class QueryEdit(_Edit):
    pass


class PathRewrite(_Block):
    pattern: str
    replacement: str

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _compiles(value, compile_rust, RegexError)

    @field_validator("replacement")
    @classmethod
    def _replacement(cls, value: str) -> str:
        try:
            parts = Template(value, groups=True).parts
        except TemplateError as exc:
            raise _problem(str(exc)) from None
        for part in parts:
            if isinstance(part, str):
                bad = [c for c in part if c in "?#" or ord(c) <= 0x20 or ord(c) >= 0x7F]
                if bad:
                    raise _problem(
                        f"{bad[0]!r} cannot appear in a path replacement (percent-encode it; the query is "
                        "edited with query_params)"
                    )
        return value


class JsonEdit(_Block):
    action: str
    path: str
    value: Any = None
    to: str | None = None

    @field_validator("action")
    @classmethod
    def _action(cls, value: str) -> str:
        return _Edit._action(value)

    @field_validator("path", "to")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        return _compiles(value, parse_pointer, PointerError)

    @field_validator("value")
    @classmethod
    def _value(cls, value: Any) -> Any:
        return _compiles(value, json_templates, TemplateError)

    @model_validator(mode="after")
    def _complete(self) -> JsonEdit:
        if self.action in ("add", "set", "replace", "append") and "value" not in self.model_fields_set:
            raise _problem(f"'{self.action}' needs a 'value'")
        if self.action == "rename" and self.to is None:
            raise _problem("'rename' needs 'to' (a JSON Pointer)")
        return self

    def templates(self) -> list[tuple[str, Template]]:
        return [("value", t) for t in json_templates(self.value)]


class StatusMapping(_Block):
    from_: int = Field(alias="from")
    to: int
    condition: str | None = None

    @field_validator("from_", "to")
    @classmethod
    def _status(cls, value: int) -> int:
        if not 100 <= value <= 599:
            raise _problem(f"{value} is not an HTTP status code (100-599)")
        return value

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        return _compiles(value, compile_condition, ConditionError)


def _max_json_body(value: int) -> int:
    if value < 0:
        raise _problem("must not be negative")
    return value


class _BodyEdits(_Block):
    """What both directions share: JSON body edits, applied to bodies up to max_json_body."""

    json_edits: list[JsonEdit] = Field(default_factory=list, alias="json")
    max_json_body: int = MAX_JSON_BODY

    @field_validator("max_json_body")
    @classmethod
    def _limit(cls, value: int) -> int:
        return _max_json_body(value)


class RequestTransformation(_BodyEdits):
    headers: list[RequestHeaderEdit] = Field(default_factory=list)
    path: PathRewrite | None = None
    query_params: list[QueryEdit] = Field(default_factory=list)


class ResponseTransformation(_BodyEdits):
    headers: list[ResponseHeaderEdit] = Field(default_factory=list)
    status_code_mappings: list[StatusMapping] = Field(default_factory=list)


def _templates(block: RequestTransformation | ResponseTransformation | None, key: str):
    if block is None:
        return
    for i, edit in enumerate(block.headers):
        for field, t in edit.templates():
            yield f"{key}.headers[{i}].{field}", t
    if isinstance(block, RequestTransformation):
        if block.path is not None:
            yield f"{key}.path.replacement", Template(block.path.replacement, groups=True)
        for i, edit in enumerate(block.query_params):
            for field, t in edit.templates():
                yield f"{key}.query_params[{i}].{field}", t
    for i, edit in enumerate(block.json_edits):
        for field, t in edit.templates():
            yield f"{key}.json[{i}].{field}", t


def route_problems(prefix: str, request: RequestTransformation | None, response: ResponseTransformation | None,
                   params: tuple[str, ...], auth_required: bool) -> list[str]:
    """Template names that need the route: path parameters it has, claims only with auth_required."""
    problems = []
    for key, block in (("request_transformation", request), ("response_transformation", response)):
        for where, template in _templates(block, key):
            for var in template.vars:
                if var.kind == "path" and var.name not in params:
                    known = ", ".join(params) or "none"
                    problems.append(f"{prefix}.{where}: {{path.{var.name}}} is not a parameter of external_path "
                                    f"(its parameters: {known})")
                elif var.kind == "claim" and not auth_required:
                    problems.append(f"{prefix}.{where}: {{claim.{var.name}}} needs auth_required: true "
                                    "(claims exist only on routes that verify a token)")
    return problems


__all__ = [
    "ACTIONS", "GROUP", "JsonEdit", "PathRewrite", "QueryEdit", "RequestHeaderEdit", "RequestTransformation",
    "ResponseHeaderEdit", "ResponseTransformation", "StatusMapping", "route_problems",
]
