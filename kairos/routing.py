"""The compiled router (a segment trie) and internal-path templates.

Patterns are written in the config as ``/api/users/{id}/files/{rest:path}``:

* a static segment matches the request segment once percent-decoded
  (``/api/us%65rs`` matches ``users``);
* ``{name}`` matches exactly one non-empty segment;
* a trailing ``{name:path}`` matches the rest of the path (one or more
  segments, slashes included, never empty).

Precedence does not depend on the order routes are listed in: segment by
segment from the left, a static segment beats a parameter, which beats a
``:path`` capture, with backtracking when a more specific branch dead-ends.
The first pattern in that order that matches the path *and* allows the method
wins; if none allows the method the result is :class:`MethodNotAllowed` with
the union of the methods of every pattern that matched the path.

Captured parameters are handed out raw (percent-encoded exactly as received)
so the proxy forwards the bytes the client sent; :class:`UnsafePath` is raised
when a captured value could escape the internal_path template (encoded slash
or backslash, literal backslash, ``.``/``..`` segments, also with a
``;parameter`` that Tomcat and Spring strip before resolving them: ``..;x``).

A pattern has at most ``MAX_SEGMENTS`` segments, and compiling one is linear
in its length (a config is input too: a 30,000-placeholder route must not
stall a reload).

Lookup cost is independent of the number of routes: one dict lookup (static
children) per segment, plus a param and a ``:path`` child per trie node.
Everything is precomputed in ``Router.__init__``; ``match`` allocates the
split path, the params dict and the result object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union
from urllib.parse import quote, unquote

__all__ = [
    "PatternError",
    "Pattern",
    "parse_pattern",
    "PathTemplate",
    "Match",
    "MethodNotAllowed",
    "UnsafePath",
    "Router",
    "MAX_SEGMENTS",
]

# Segment kinds in Pattern.segments: (kind, value)
STATIC = 0  # value: the percent-decoded literal ('' only as the last segment: trailing slash)
PARAM = 1  # value: the parameter name
PATH = 2  # value: the parameter name (always the last segment)

# Longest pattern accepted. Real APIs nest a dozen levels at most; the cap also
# bounds the depth of the router's depth-first search (recursion).
MAX_SEGMENTS = 128

# Characters kept as-is when a static segment is re-encoded for Pattern.shape.
_SHAPE_SAFE = "!$&'()*+,;=:@-._~"


class PatternError(ValueError):
    """A route pattern or internal_path template is invalid (message says why)."""


class UnsafePath(Exception):
    """A captured path parameter could escape the internal_path template (-> 400)."""


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    text: str
    segments: tuple[tuple[int, str], ...]
    param_names: tuple[str, ...]
    shape: str
    static_count: int


def _check_placeholder_body(body: str, placeholder: str, text: str, *, what: str) -> tuple[str, str]:
    """Split '{name:conv}' contents into (name, converter) and validate the name."""
    if body == "":
        raise PatternError(f"empty placeholder '{{}}' in {what} {text!r}; give it a name, e.g. '{{id}}'")
    if "{" in body:
        raise PatternError(f"placeholder {placeholder!r} in {what} {text!r} contains a nested '{{'")
    name, sep, conv = body.partition(":")
    if not name.isidentifier():
        raise PatternError(
            f"placeholder name {name!r} in {placeholder!r} ({what} {text!r}) is not a valid identifier"
        )
    return name, (conv if sep else None)  # type: ignore[return-value]


def parse_pattern(text: str) -> Pattern:
    """Parse a route pattern such as ``/api/users/{id}/files/{rest:path}``."""
    if not isinstance(text, str):
        raise PatternError(f"a route pattern must be a string, not {type(text).__name__}")
    if not text.startswith("/"):
        raise PatternError(f"pattern {text!r} does not start with '/'")
    if "?" in text or "#" in text:
        ch = "?" if "?" in text else "#"
        raise PatternError(
            f"pattern {text!r} contains {ch!r}; a pattern matches the path only (percent-encode it as "
            f"{quote(ch, safe='')!r} if it is part of a segment)"
        )
    raw_segments = text[1:].split("/")
    if len(raw_segments) > MAX_SEGMENTS:
        raise PatternError(
            f"pattern {text[:40]!r}... has {len(raw_segments)} segments; a route has at most {MAX_SEGMENTS}"
        )
    last = len(raw_segments) - 1
    segments: list[tuple[int, str]] = []
    names: dict[str, None] = {}  # ordered set: membership in O(1)
    shape_parts: list[str] = []
    static_count = 0
    for i, seg in enumerate(raw_segments):
        if seg == "":
            if i != last:
                raise PatternError(f"pattern {text!r} has an empty segment ('//')")
            # trailing slash (or the root pattern '/'): must match literally
            segments.append((STATIC, ""))
            shape_parts.append("")
            continue
        open_at = seg.find("{")
        close_at = seg.find("}")
        if open_at == -1 and close_at == -1:
            value = unquote(seg) if "%" in seg else seg
            if value in (".", ".."):
                raise PatternError(f"pattern {text!r} contains a {seg!r} segment; dot segments are not allowed")
            segments.append((STATIC, value))
            shape_parts.append(quote(value, safe=_SHAPE_SAFE))
            static_count += 1
            continue
        if close_at != -1 and (open_at == -1 or close_at < open_at):
            raise PatternError(f"stray '}}' in segment {seg!r} of pattern {text!r}")
        # there is a '{' before any '}'
        if close_at == -1:
            raise PatternError(f"placeholder {seg[open_at:]!r} is not closed (in pattern {text!r})")
        placeholder = seg[open_at : close_at + 1]
        if open_at != 0 or close_at != len(seg) - 1:
            rest = seg[close_at + 1 :]
            if "}" in rest and "{" not in rest:
                raise PatternError(f"stray '}}' in segment {seg!r} of pattern {text!r}")
            raise PatternError(
                f"placeholder {placeholder!r} is only part of the segment {seg!r} in pattern {text!r}; "
                f"in external_path a placeholder must be a whole segment, between two '/'"
            )
        name, conv = _check_placeholder_body(seg[1:-1], placeholder, text, what="pattern")
        if name in names:
            raise PatternError(f"placeholder name {name!r} is used twice in pattern {text!r}")
        names[name] = None
        if conv is None:
            segments.append((PARAM, name))
            shape_parts.append("{}")
        elif conv == "path":
            if i != last:
                raise PatternError(
                    f"{placeholder!r} captures the rest of the path, so it must be the last segment "
                    f"of pattern {text!r}"
                )
            segments.append((PATH, name))
            shape_parts.append("{:path}")
        else:
            raise PatternError(
                f"unknown converter ':{conv}' in {placeholder!r} (pattern {text!r}); only ':path' is supported"
            )
    return Pattern(
        text=text,
        segments=tuple(segments),
        param_names=tuple(names),
        shape="/" + "/".join(shape_parts),
        static_count=static_count,
    )


# --------------------------------------------------------------------------- templates


class PathTemplate:
    """internal_path with placeholders, e.g. '/v1/{id}' or '/files/{rest}'.

    Placeholders may be part of a segment ('/v1/item-{id}.json'); a ':path'
    capture is written plainly ('{rest}'). ``render`` substitutes the raw
    (still percent-encoded) captured values.
    """

    __slots__ = ("text", "param_names", "_parts", "_slots")

    def __init__(self, text: str, available: Iterable[str]) -> None:
        if not isinstance(text, str) or not text.startswith("/"):
            raise PatternError(f"internal_path {text!r} does not start with '/'")
        available = frozenset(available)
        parts: list[str] = []
        slots: list[tuple[int, str]] = []
        names: dict[str, None] = {}  # ordered set: membership in O(1)
        pos = 0
        n = len(text)
        while pos < n:
            open_at = text.find("{", pos)
            close_at = text.find("}", pos)
            if close_at != -1 and (open_at == -1 or close_at < open_at):
                raise PatternError(f"stray '}}' in internal_path {text!r}")
            if open_at == -1:
                parts.append(text[pos:])
                break
            if open_at > pos:
                parts.append(text[pos:open_at])
            if close_at == -1:
                raise PatternError(f"placeholder {text[open_at:]!r} is not closed (in internal_path {text!r})")
            placeholder = text[open_at : close_at + 1]
            name, conv = _check_placeholder_body(placeholder[1:-1], placeholder, text, what="internal_path")
            if conv is not None:
                raise PatternError(
                    f"placeholder {placeholder!r} in internal_path {text!r} has a converter; "
                    f"write it plainly as '{{{name}}}' (':path' belongs in external_path only)"
                )
            if name not in available:
                raise PatternError(
                    f"internal_path uses {{{name}}} but external_path has no such placeholder"
                )
            slots.append((len(parts), name))
            parts.append("")
            names[name] = None
            pos = close_at + 1
        self.text = text
        self.param_names: tuple[str, ...] = tuple(names)
        self._parts = tuple(parts)
        self._slots = tuple(slots)

    def render(self, params: dict[str, str]) -> str:
        if not self._slots:
            return self.text
        out = list(self._parts)
        for idx, name in self._slots:
            out[idx] = params[name]
        return "".join(out)

    def __repr__(self) -> str:
        return f"PathTemplate({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PathTemplate) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Match:
    target: object
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allow: tuple[str, ...]


# --------------------------------------------------------------------------- safety


def check_param(name: str, value: str, is_path: bool, what: str = "path parameter {!r}") -> None:
    """Raise UnsafePath when `value` could escape the path it is put in; `what` names it in
    the message (formatted with `name`; the transformation's path rewrite uses it too)."""
    if "\\" in value:
        raise UnsafePath(f"{what.format(name)} contains a backslash")
    if "%" in value:
        low = value.lower()
        if "%2f" in low:
            raise UnsafePath(f"{what.format(name)} contains an encoded slash")
        if "%5c" in low:
            raise UnsafePath(f"{what.format(name)} contains an encoded backslash")
    for seg in value.split("/") if is_path else (value,):
        if "%" in seg:
            seg = unquote(seg)
        # '..;jsessionid=x' is '..' to Tomcat and Spring, which drop ';params' first
        cut = seg.find(";")
        if cut != -1:
            seg = seg[:cut]
        if seg == "." or seg == "..":
            raise UnsafePath(f"{what.format(name)} contains a '.' or '..' segment")


# --------------------------------------------------------------------------- router
#
# A trie node is a plain dict (the fastest thing CPython can walk):
#   str key  -> child node for that (percent-decoded) static segment
#   _PARAM   -> child node for a '{name}' segment (at most one)
#   _PATH    -> method table of the routes whose last segment '{name:path}' sits here
#   _LEAF    -> method table of the routes ending at this node
#   _STATIC  -> True when the node has static children (a '%' segment is only
#               worth decoding when there is a static segment to compare it with)
# The int keys cannot collide with segment strings. A method table maps an
# uppercase method to its _Route; HEAD is filled in from GET. Every node has at
# least one key, so a node is always truthy (the fast path relies on it).

_LEAF = 0
_PARAM = 1
_PATH = 2
_STATIC = 3


class _Route:
    """One registered entry, with where its params sit in path.split('/')."""

    __slots__ = ("pattern", "target", "methods", "names", "idxs", "kind", "name", "idx", "path_name", "path_idx")

    def __init__(self, pattern: Pattern, methods: frozenset[str], target: object) -> None:
        self.pattern = pattern
        self.target = target
        self.methods = methods
        names: list[str] = []
        idxs: list[int] = []
        self.path_name: str | None = None
        self.path_idx = -1
        # item 0 of path.split('/') is the '' before the leading '/', hence start=1
        for i, (kind, value) in enumerate(pattern.segments, 1):
            if kind == PARAM:
                names.append(value)
                idxs.append(i)
            elif kind == PATH:
                self.path_name = value
                self.path_idx = i
        self.names = tuple(names)
        self.idxs = tuple(idxs)
        # 0: no parameters, 1: exactly one '{name}' (the fast path), 2: anything else
        if not names and self.path_name is None:
            self.kind = 0
        elif len(names) == 1 and self.path_name is None:
            self.kind = 1
        else:
            self.kind = 2
        self.name = names[0] if names else ""
        self.idx = idxs[0] if idxs else -1

    def params(self, segs: list[str]) -> dict[str, str]:
        params = {name: segs[i] for name, i in zip(self.names, self.idxs)}
        if self.path_name is not None:
            params[self.path_name] = "/".join(segs[self.path_idx :])
        return params


def _search(node: dict, segs: list[str], i: int, n: int, method: str) -> _Route | None:
    """Depth-first, in precedence order: the first route matching the path that allows `method`."""
    if i == n:
        leaf = node.get(_LEAF)
        return leaf.get(method) if leaf is not None else None
    seg = segs[i]
    child = node.get(unquote(seg) if "%" in seg and _STATIC in node else seg)
    if child is not None:
        r = _search(child, segs, i + 1, n, method)
        if r is not None:
            return r
    if seg:  # a parameter or a ':path' capture never starts with an empty segment
        child = node.get(_PARAM)
        if child is not None:
            r = _search(child, segs, i + 1, n, method)
            if r is not None:
                return r
        table = node.get(_PATH)
        if table is not None:
            return table.get(method)
    return None


def _collect(node: dict, segs: list[str], i: int, n: int, allow: set[str]) -> bool:
    """Add the methods of every route matching the path to `allow`; True if any matched."""
    if i == n:
        leaf = node.get(_LEAF)
        if leaf is not None:
            allow.update(leaf)
            return True
        return False
    found = False
    seg = segs[i]
    child = node.get(unquote(seg) if "%" in seg and _STATIC in node else seg)
    if child is not None:
        found = _collect(child, segs, i + 1, n, allow)
    if seg:
        child = node.get(_PARAM)
        if child is not None:
            found = _collect(child, segs, i + 1, n, allow) or found
        table = node.get(_PATH)
        if table is not None:
            allow.update(table)
            found = True
    return found


def _finish_nodes(node: dict) -> None:
    """Mark nodes with static children; HEAD wherever GET is, unless a route of
    the same shape registered HEAD itself."""
    stack = [node]
    while stack:
        node = stack.pop()
        has_static = False
        for key, value in node.items():
            if key == _LEAF or key == _PATH:
                if "GET" in value and "HEAD" not in value:
                    value["HEAD"] = value["GET"]
            else:
                has_static = has_static or key != _PARAM
                stack.append(value)
        if has_static:
            node[_STATIC] = True


# Build Match objects without the frozen dataclass __init__ (two
# object.__setattr__ calls): set the slots through their descriptors.
_new = object.__new__
_set_target = Match.__dict__["target"].__set__
_set_params = Match.__dict__["params"].__set__


EntryPattern = Union[str, Pattern]


class Router:
    """Routes (method, raw path) to the registered target; compiled once."""

    __slots__ = ("_super", "_routes")

    def __init__(self, entries: Iterable[tuple[EntryPattern, Iterable[str], object]]) -> None:
        root: dict = {}
        routes: list[_Route] = []
        # shape key -> routes already registered with that shape
        by_shape: dict[tuple[tuple[int, str], ...], list[_Route]] = {}
        for entry in entries:
            pattern, methods, target = entry
            if not isinstance(pattern, Pattern):
                pattern = parse_pattern(pattern)
            if isinstance(methods, str):
                methods = (methods,)
            mset = frozenset(m.upper() for m in methods)
            if not mset:
                raise PatternError(f"route {pattern.text!r} lists no methods")
            route = _Route(pattern, mset, target)
            key = tuple((kind, value if kind == STATIC else "") for kind, value in pattern.segments)
            same = by_shape.setdefault(key, [])
            for other in same:
                overlap = other.methods & mset
                if overlap:
                    raise PatternError(
                        f"routes {other.pattern.text!r} and {pattern.text!r} have the same shape "
                        f"{pattern.shape!r} and both accept {', '.join(sorted(overlap))}"
                    )
            same.append(route)
            routes.append(route)

            node = root
            table = None
            for kind, value in pattern.segments:
                if kind == PATH:  # always the last segment
                    table = node.setdefault(_PATH, {})
                    break
                node = node.setdefault(value if kind == STATIC else _PARAM, {})
            if table is None:
                table = node.setdefault(_LEAF, {})
            for m in mset:
                table[m] = route

        _finish_nodes(root)
        # item 0 of path.split('/') is '' for a path starting with '/': the
        # super-root's only child is '' -> root, so any other path matches nothing.
        self._super = {"": root}
        self._routes = tuple(routes)

    def __len__(self) -> int:
        return len(self._routes)

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        return tuple(r.pattern for r in self._routes)

    def match(self, method: str, path: str) -> Match | MethodNotAllowed | None:
        segs = path.split("/")
        route = None
        # Fast path: follow the most specific branch greedily (static, else param,
        # else ':path'). That is the first descent of the depth-first search, so if
        # it ends on a route allowing the method, that route is the answer. Two
        # copies of the loop so that paths without '%' (most) skip the per-segment check.
        node = self._super
        if "%" not in path:
            for seg in segs:
                child = node.get(seg) or seg and node.get(_PARAM)
                if not child:  # None, or '' for an empty segment with no static '' child
                    if seg:
                        table = node.get(_PATH)
                        if table is not None:
                            route = table.get(method)
                    break
                node = child
            else:
                leaf = node.get(_LEAF)
                if leaf is not None:
                    route = leaf.get(method)
        else:
            for seg in segs:
                child = node.get(unquote(seg) if "%" in seg and _STATIC in node else seg) or seg and node.get(_PARAM)
                if not child:
                    if seg:
                        table = node.get(_PATH)
                        if table is not None:
                            route = table.get(method)
                    break
                node = child
            else:
                leaf = node.get(_LEAF)
                if leaf is not None:
                    route = leaf.get(method)
        if route is None:
            route = _search(self._super, segs, 0, len(segs), method)
            if route is None:
                allow: set[str] = set()
                if _collect(self._super, segs, 0, len(segs), allow):
                    return MethodNotAllowed(tuple(sorted(allow)))
                return None
        kind = route.kind
        if kind == 1:  # exactly one '{name}'
            value = segs[route.idx]
            if value[0] == "." or "%" in value or "\\" in value:
                check_param(route.name, value, False)
            params = {route.name: value}
        elif kind == 0:
            params = {}
        else:
            params = route.params(segs)
            path_name = route.path_name
            for name, value in params.items():
                if "." in value or "%" in value or "\\" in value:
                    check_param(name, value, name == path_name)
        m = _new(Match)
        _set_target(m, route.target)
        _set_params(m, params)
        return m
