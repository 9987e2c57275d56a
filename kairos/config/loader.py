"""Reading a config: file -> JSON -> environment overrides -> validated GatewayConfig.

Every problem is collected and reported at once, each with its JSON path
(`routers[3].backends[0].port: must be 1-65535`), so an operator fixes a file
in one pass instead of one error per restart.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import stat
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from kairos.config.models import RESERVED_PATHS, GatewayConfig, RouterConfig
from kairos.routing import Router, parse_pattern
from kairos.transform.config import route_problems as transformation_problems

DEFAULT_CONFIG_PATH = "./config.json"
ENV_PREFIX = "KAIROS_"

# A config is input like any other. A real one is a few KiB, nests 5 levels and
# holds no integer above 2**63; these bounds turn pathological files (a gigabyte,
# thousands of levels, a 5,000-digit integer Python refuses to convert) into
# problems instead of a traceback, a hang or a stalled reload.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 30
MAX_PROBLEMS = 50


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


def config_path_from_env(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("KAIROS_CONFIG_PATH", DEFAULT_CONFIG_PATH)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {p}"], str(p)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read config file: {exc}"], str(p)) from None
    if stat.S_ISDIR(mode):
        raise ConfigError([f"config path is a directory, not a file: {p}"], str(p))
    if not stat.S_ISREG(mode):  # a FIFO blocks, /dev/zero never ends
        raise ConfigError([f"config path is not a regular file: {p}"], str(p))
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        # utf-8-sig: a byte-order mark written by an editor is not an error
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read config file: {exc}"], str(p)) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"config file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"], str(p))
    if not text.strip():
        raise ConfigError(["config file is empty"], str(p))
    data = parse_json(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a JSON object"], str(p))
    return data


class _Unusable:
    """A JSON value that was read but cannot be used; reported with its path by check_tree."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object whose text repeated a key (json keeps the last one silently)."""

    duplicates: list[str]


def _parse_int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:  # int() refuses above 4,300 digits with a ValueError
        return _Unusable(f"an integer with {digits} digits (a config number has at most {MAX_INT_DIGITS})")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    out = _Object(obj)
    seen: set[str] = set()
    out.duplicates = list(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return out


def parse_json(text: str, source: str | None = None) -> Any:
    """json.loads that answers ConfigError for what json lets through or raises on."""
    try:
        return json.loads(text, parse_int=_parse_int, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"], source) from None
    except RecursionError:
        raise ConfigError([f"the JSON is nested too deeply to read (a config nests at most {MAX_DEPTH} levels)"], source) from None


def check_tree(data: Any) -> list[str]:
    """Problems in the shape of parsed JSON, each with its path; iterative, so depth cannot hurt.

    Too deep, a value json read but nothing can use (NaN, Infinity, a number too large to be
    finite, a huge integer), a key given twice in one object.
    """
    problems: list[str] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack and len(problems) <= MAX_PROBLEMS:
        value, loc = stack.pop()
        where = format_path(loc) or "top level"
        if isinstance(value, _Unusable):
            problems.append(f"{where}: {value.why}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {value} is not a finite number (NaN, Infinity, or too large)")
        elif isinstance(value, (dict, list)):
            if len(loc) >= MAX_DEPTH:
                problems.append(f"{where}: nested more than {MAX_DEPTH} levels deep")
                continue
            for key in getattr(value, "duplicates", ()):
                problems.append(f"{where}: key '{key}' is given more than once")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, loc + (k,)) for k, v in reversed(list(items)))
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = ["... (more problems not listed)"]
    return problems


def strip_comments(value: Any) -> Any:
    """Drop keys starting with '_' (kairos-rs files use `_comment`)."""
    if isinstance(value, dict):
        return {k: strip_comments(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(value, list):
        return [strip_comments(v) for v in value]
    return value


def load_config(path: str | os.PathLike[str] | None = None, use_env: bool = True) -> GatewayConfig:
    """Read, override from the environment and validate; raise ConfigError listing every problem."""
    path = config_path_from_env() if path is None else path
    try:
        return parse_config(read_json(path), use_env=use_env)
    except ConfigError as exc:
        exc.source = exc.source or str(path)
        raise ConfigError(exc.problems, str(path)) from None


def parse_config(data: Mapping[str, Any], use_env: bool = True) -> GatewayConfig:
    """Validate a config dict (KAIROS_* environment overrides applied, unless told not to)."""
    problems = check_tree(data)
    if problems:
        raise ConfigError(problems)
    data = strip_comments(dict(data))
    try:
        merged = _apply_environment(data) if use_env else data
    except (RecursionError, ValueError) as exc:  # pydantic-settings' json.loads of a KAIROS_* value
        raise ConfigError([f"a {ENV_PREFIX}* environment variable cannot be read: {str(exc)[:200]}"]) from None
    problems = check_tree(merged)
    if problems:
        raise ConfigError([f"{p} (after {ENV_PREFIX}* environment overrides)" for p in problems])
    try:
        config = GatewayConfig.model_validate(merged)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        problems += _cross_checks_on_raw(data)
        raise ConfigError(_unique(problems)) from None
    problems = cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def _model_of(annotation: Any) -> Any:
    """Unwrap Optional[...] / list[...] down to a model class, if there is one."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
        return None
    return annotation


# --- environment overrides -------------------------------------------------------------------


class _EnvBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")


def _loose(annotation: Any) -> Any:
    """Blocks read as plain dicts/lists so validation (with JSON paths) happens once, on the merge."""
    model = _model_of(annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return (list[Any] | None) if typing.get_origin(annotation) is list else (dict[str, Any] | None)
    return Any


# pydantic-settings reads KAIROS_* (`__` nests: KAIROS_SERVER__PORT=6000) into this shape.
_EnvOverrides = create_model(  # type: ignore[call-overload]
    "_EnvOverrides",
    __base__=_EnvBase,
    **{name: (_loose(f.annotation), None) for name, f in GatewayConfig.model_fields.items()},
)


def _apply_environment(data: dict[str, Any]) -> dict[str, Any]:
    overrides = _EnvOverrides().model_dump(exclude_none=True)
    # kairos-rs's own variables, kept for compatibility.
    if "KAIROS_HOST" in os.environ:
        overrides.setdefault("server", {})["host"] = os.environ["KAIROS_HOST"]
    if "KAIROS_PORT" in os.environ:
        overrides.setdefault("server", {})["port"] = os.environ["KAIROS_PORT"]
    return _deep_merge(data, overrides)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --- error messages --------------------------------------------------------------------------


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = format_path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _known_keys(loc[:-1])
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known keys: {', '.join(sorted(known))})"
        return f"{path}: unknown key '{key}'{hint}"
    if kind == "missing":
        return f"{path}: is required"
    msg = err["msg"]
    if kind == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{path}: {msg}" if path else msg


def format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_backend_host(), str]",) or "[" in str(part) and "(" in str(part):
            continue  # pydantic's internal validator names
        else:
            out += ("." if out else "") + str(part)
    return out


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = GatewayConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in _keys(model):
            return []
        model = _model_of(_keys(model)[part].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(_keys(model))
    return []


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the key written in the config (its alias, e.g. 'json', 'from')."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- checks across routes ---------------------------------------------------------------------


_NO_JWT = "routers[{i}].auth_required: true, but there is no top-level 'jwt' block to verify tokens"


def cross_checks(config: GatewayConfig) -> list[str]:
    problems: list[str] = []
    if any(r.auth_required for r in config.routers) and config.jwt is None:
        for i, r in enumerate(config.routers):
            if r.auth_required:
                problems.append(_NO_JWT.format(i=i))
    problems += _route_conflicts([(r.external_path, r.methods) for r in config.routers])
    seen: dict[str, int] = {}
    for i, r in enumerate(config.routers):
        if r.name is not None:
            if r.name in seen:
                problems.append(f"routers[{i}].name: '{r.name}' is already the name of routers[{seen[r.name]}]")
            seen.setdefault(r.name, i)
    for i, r in enumerate(config.routers):
        if r.request_transformation is not None or r.response_transformation is not None:
            problems += transformation_problems(
                f"routers[{i}]", r.request_transformation, r.response_transformation,
                parse_pattern(r.external_path).param_names, r.auth_required,
            )
    return problems


def _cross_checks_on_raw(data: Mapping[str, Any]) -> list[str]:
    """The cross-route checks, best effort on a config that failed validation elsewhere."""
    routers = data.get("routers")
    if not isinstance(routers, list):
        return []
    problems = []
    if data.get("jwt") is None:
        for i, r in enumerate(routers):
            if isinstance(r, dict) and r.get("auth_required") is True:
                problems.append(_NO_JWT.format(i=i))
    entries: list[tuple[str, list[str]] | None] = []
    for r in routers:
        ok = isinstance(r, dict) and isinstance(r.get("external_path"), str) and isinstance(r.get("methods"), list)
        entries.append((r["external_path"], [str(m).upper() for m in r["methods"]]) if ok else None)
    return problems + _route_conflicts(entries)


def _route_conflicts(entries: list[tuple[str, list[str]] | None]) -> list[str]:
    problems = []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(entries):
        if entry is None:
            continue
        path, methods = entry
        try:
            pattern = parse_pattern(path)
        except ValueError:
            continue
        if pattern.static_count == len(pattern.segments) and _reserved_collision(path):
            problems.append(f"routers[{i}].external_path: '{path}' is one of the gateway's own endpoints ({', '.join(RESERVED_PATHS)})")
        for method in dict.fromkeys(methods):
            key = (pattern.shape, method)
            if key in seen:
                j = seen[key]
                other = entries[j][0]  # type: ignore[index]
                clash = f"duplicates routers[{j}]" if other == path else f"conflicts with routers[{j}] '{other}' (same path shape)"
                problems.append(f"routers[{i}]: {method} {path} {clash}")
            else:
                seen[key] = i
    return problems


def _reserved_collision(path: str) -> bool:
    router = Router([(path, ["GET"], True)])
    return any(router.match("GET", reserved) is not None for reserved in RESERVED_PATHS)


__all__ = [
    "ConfigError",
    "DEFAULT_CONFIG_PATH",
    "GatewayConfig",
    "RouterConfig",
    "config_path_from_env",
    "load_config",
    "parse_config",
    "read_json",
    "parse_json",
    "check_tree",
]
