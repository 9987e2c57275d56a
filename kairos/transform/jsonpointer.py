"""RFC 6901 JSON Pointers and the edits made with them (add, set, replace, remove, rename, append).

A pointer is parsed once into its reference tokens. Edits never raise on a
document that does not fit (a missing parent, an index past the end, a
string where an object was expected): the edit is skipped, as Kong's
transformer skips a key that is not there. Missing parent objects are created
for add, set and the target of rename.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


class PointerError(ValueError):
    pass


def parse_pointer(text: str) -> tuple[str, ...]:
    """'/a/b~1c' -> ('a', 'b/c'). The whole document ('') cannot be edited."""
    if text == "":
        raise PointerError("'' points at the whole document; name a member, e.g. '/data'")
    if not text.startswith("/"):
        raise PointerError(f"{text!r} is not a JSON Pointer (RFC 6901): it must start with '/'")
    tokens = []
    for raw in text[1:].split("/"):
        i = raw.find("~")
        while i != -1:
            if raw[i + 1 : i + 2] not in ("0", "1"):
                raise PointerError(f"{text!r}: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')")
            i = raw.find("~", i + 2)
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(tokens)


def _index(container: list, token: str, *, end_ok: bool) -> int | None:
    """A list index from a reference token ('-' is one past the end), or None if invalid."""
    if token == "-":
        return len(container) if end_ok else None
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        return None
    i = int(token)
    if i < len(container) or (end_ok and i == len(container)):
        return i
    return None


def _parent(doc: Any, tokens: tuple[str, ...], create: bool) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            child = node.get(token, _MISSING)
            if child is _MISSING:
                if not create:
                    return _MISSING
                child = node[token] = {}
            node = child
        elif isinstance(node, list):
            i = _index(node, token, end_ok=False)
            if i is None:
                return _MISSING
            node = node[i]
        else:
            return _MISSING
    return node


def _member(doc: Any, tokens: tuple[str, ...]) -> tuple[Any, Any] | None:
    """The container holding the member the pointer names and its key or index; None when absent."""
    parent = _parent(doc, tokens, False)
    last = tokens[-1]
    if isinstance(parent, dict):
        return (parent, last) if last in parent else None
    if isinstance(parent, list):
        i = _index(parent, last, end_ok=False)
        return None if i is None else (parent, i)
    return None


def get(doc: Any, tokens: tuple[str, ...]) -> Any:
    member = _member(doc, tokens)
    return _MISSING if member is None else member[0][member[1]]


def put(doc: Any, tokens: tuple[str, ...], value: Any, *, only_if_absent: bool = False,
        only_if_present: bool = False) -> None:
    """Set the member (a list index replaces that item; '-' appends)."""
    parent = _parent(doc, tokens, not only_if_present)
    last = tokens[-1]
    if isinstance(parent, dict):
        present = last in parent
        if (only_if_absent and present) or (only_if_present and not present):
            return
        parent[last] = value
    elif isinstance(parent, list):
        i = _index(parent, last, end_ok=True)
        if i is None:
            return
        present = i < len(parent)
        if (only_if_absent and present) or (only_if_present and not present):
            return
        if present:
            parent[i] = value
        else:
            parent.append(value)


def pop(doc: Any, tokens: tuple[str, ...]) -> Any:
    """Remove the member and return it (_MISSING when it was not there)."""
    member = _member(doc, tokens)
    return _MISSING if member is None else member[0].pop(member[1])


def append(doc: Any, tokens: tuple[str, ...], value: Any) -> None:
    """Append to the array at the pointer; a missing member becomes [value]; a scalar becomes [it, value]."""
    current = get(doc, tokens)
    if current is _MISSING:
        put(doc, tokens, [value])
    elif isinstance(current, list):
        current.append(value)
    else:
        put(doc, tokens, [current, value], only_if_present=True)


def rename(doc: Any, tokens: tuple[str, ...], to: tuple[str, ...]) -> None:
    value = pop(doc, tokens)
    if value is not _MISSING:
        put(doc, to, value)
