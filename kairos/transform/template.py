"""Templates in transformation values: `{header.x-user}`, `{claim.sub}`, `{request_id}`, ...

Parsed once when the config is compiled into a tuple of parts (literal strings
and `Var`s); rendering is one join. Replacements (the `replacement` of a regex
edit) also accept kairos-rs's Rust capture references, `$1`, `${1}`, `${name}`
and `$$`, with Rust's exact rules (regex crate, `Captures::expand`):

* `$$` is a literal `$`;
* `${...}` is a reference to whatever stands between the braces (a number or
  a group name); without a closing brace the `$` is literal;
* `$` followed by the longest run of `[0-9A-Za-z_]` is a reference (so `$1a`
  names a group called `1a`); `$` followed by anything else is literal;
* a reference to a group that does not exist or did not take part in the
  match expands to the empty string.

`{{` and `}}` are literal braces; a lone `}` or an unclosed `{` is an error, as
is an unknown name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import quote, unquote, unquote_plus

if TYPE_CHECKING:
    import re

    from kairos.transform.view import RequestView

# Names without a dot, and namespaces written `{namespace.<name>}`.
PLAIN = ("request_id", "client_ip", "route")
NAMESPACES = ("path", "query", "header", "claim")
GROUP = "group"  # a regex capture reference (replacements only)

_CAP_LETTERS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


class TemplateError(ValueError):
    """A template cannot be parsed; the message says where and why."""


class Var:
    """One substitution: `kind` is a PLAIN name, a namespace, or GROUP; `name` its argument."""

    __slots__ = ("kind", "name", "index")

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.index: int | None = None  # GROUP: the resolved group number (None: expands to '')

    def __repr__(self) -> str:
        if self.kind == GROUP:
            return f"${{{self.name}}}"
        return f"{{{self.kind}}}" if self.kind in PLAIN else f"{{{self.kind}.{self.name}}}"


Part = Union[str, Var]


def _var(body: str, text: str) -> Var:
    if body in PLAIN:
        return Var(body, "")
    kind, dot, name = body.partition(".")
    if dot and kind in NAMESPACES and name:
        return Var(kind, name.lower() if kind == "header" else name)
    known = ", ".join([f"{{{p}}}" for p in PLAIN] + [f"{{{n}.<name>}}" for n in NAMESPACES])
    raise TemplateError(f"unknown template name {{{body}}} in {text!r} (one of {known}; write {{{{ and }}}} for literal braces)")


def _rust_ref(text: str, i: int) -> tuple[Var | None, int]:
    """At text[i] == '$' (not '$$'): the capture reference there and where it ends, or (None, i+1)."""
    j = i + 1
    if j < len(text) and text[j] == "{":
        close = text.find("}", j + 1)
        if close == -1:
            return None, i + 1
        return Var(GROUP, text[j + 1 : close]), close + 1
    k = j
    while k < len(text) and text[k] in _CAP_LETTERS:
        k += 1
    if k == j:
        return None, i + 1
    return Var(GROUP, text[j:k]), k


def parse(text: str, *, groups: bool = False) -> tuple[Part, ...]:
    """Split `text` into literal strings and Vars; `groups` turns on `$` capture references."""
    parts: list[Part] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and groups:
            if text.startswith("$$", i):
                literal.append("$")
                i += 2
                continue
            var, i = _rust_ref(text, i)
            if var is None:
                literal.append("$")
                continue
        elif ch == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            close = text.find("}", i + 1)
            if close == -1:
                raise TemplateError(f"'{{' at offset {i} of {text!r} is not closed (write {{{{ for a literal brace)")
            var = _var(text[i + 1 : close], text)
            i = close + 1
        elif ch == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise TemplateError(f"lone '}}' at offset {i} of {text!r} (write }}}} for a literal brace)")
        else:
            literal.append(ch)
            i += 1
            continue
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(var)
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


class Template:
    """A parsed template; `constant` is its text when it has no substitutions."""

    __slots__ = ("text", "parts", "constant", "vars")

    def __init__(self, text: str, *, groups: bool = False) -> None:
        self.text = text
        self.parts = parse(text, groups=groups)
        self.vars = tuple(p for p in self.parts if isinstance(p, Var))
        self.constant: str | None = None if self.vars else "".join(self.parts)  # type: ignore[arg-type]

    def uses(self, kind: str) -> Iterable[Var]:
        return (v for v in self.vars if v.kind == kind)

    def bind_groups(self, pattern: re.Pattern[str]) -> None:
        """Resolve capture references against `pattern` (unknown ones expand to '', as in Rust)."""
        for var in self.uses(GROUP):
            if var.name.isdigit():
                number = int(var.name)
                var.index = number if number <= pattern.groups else None
            else:
                var.index = pattern.groupindex.get(var.name)

    def render(self, view: RequestView | None, *, url: bool = False, match: re.Match[str] | None = None) -> str:
        """The text for one request; `url` renders for a path or query (values percent-encoded,
        raw path and query values as the client sent them), otherwise for a header (decoded)."""
        if self.constant is not None:
            return self.constant
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.kind == GROUP:
                if match is not None and part.index is not None:
                    out.append(match.group(part.index) or "")
            else:
                out.append(value_of(part, view, url))  # type: ignore[arg-type]
        return "".join(out)


def value_of(var: Var, view: RequestView, url: bool) -> str:
    kind = var.kind
    if kind == "path":
        raw = view.params.get(var.name, "")
        return raw if url else unquote(raw)
    if kind == "query":
        raw = view.query(var.name) or ""
        return raw if url else unquote_plus(raw)
    if kind == "header":
        value = view.header(var.name) or ""
    elif kind == "claim":
        value = view.claim(var.name)
    elif kind == "request_id":
        value = view.scope.get("kairos.request_id", "")
    elif kind == "client_ip":
        value = view.client_ip()
    else:  # route
        value = view.route_name
    return quote(value, safe="") if url else value


def json_template(value: Any) -> Any:
    """A JSON value with templates in its strings, compiled: returns a builder(view) -> fresh value."""
    if isinstance(value, str):
        t = Template(value)
        if t.constant is not None:
            return lambda view, c=t.constant: c
        return lambda view, t=t: t.render(view)
    if isinstance(value, list):
        items = [json_template(v) for v in value]
        return lambda view: [b(view) for b in items]
    if isinstance(value, dict):
        members = [(k, json_template(v)) for k, v in value.items()]
        return lambda view: {k: b(view) for k, b in members}
    return lambda view, c=value: c


def json_templates(value: Any) -> list[Template]:
    """Every template inside a JSON value (for the config checks)."""
    if isinstance(value, str):
        return [Template(value)]
    if isinstance(value, list):
        return [t for v in value for t in json_templates(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in json_templates(v)]
    return []
