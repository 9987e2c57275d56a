"""The condition language of `status_code_mappings[].condition`, parsed at load, never eval'd.

    condition  := or
    or         := and ( "||" and )*
    and        := unary ( "&&" unary )*
    unary      := "!" unary | "(" or ")" | comparison
    comparison := subject op string
    subject    := "path" | "method" | "header." <header name>
    op         := "==" | "!=" | "^=" (starts with) | "~" (Rust regex, searched)
    string     := '...' or "..." (backslash escapes the quote and itself)

`path` is the path the client sent (percent-encoding kept, no query);
`method` compares case-insensitively; `header.<name>` is the header's first
value, and a comparison with an absent header is false (`!=` true). `&&` binds
tighter than `||`. The result is a tree of closures over a RequestView.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from kairos.transform.rustre import RegexError, compile_rust
from kairos.transform.view import RequestView

Check = Callable[[RequestView], bool]


class ConditionError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|\^=|~|&&|\|\||!|\(|\))
      | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
    )""",
    re.VERBOSE | re.DOTALL,
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ConditionError(f"unexpected {text[pos:].lstrip()[:10]!r} at offset {pos} in {text!r}")
        kind = m.lastgroup
        value = m.group(kind)  # type: ignore[arg-type]
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
        out.append((kind, value, m.start(kind)))  # type: ignore[arg-type]
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise ConditionError(f"{self.text!r} ends too early")
        self.i += 1
        return token

    def fail(self, token: tuple[str, str, int], wanted: str) -> ConditionError:
        return ConditionError(f"expected {wanted} at offset {token[2]} of {self.text!r}, found {token[1]!r}")

    def parse(self) -> Check:
        check = self.either()
        token = self.peek()
        if token is not None:
            raise self.fail(token, "'&&', '||' or the end")
        return check

    def either(self) -> Check:
        checks = [self.both()]
        while (t := self.peek()) is not None and t[1] == "||" and t[0] == "op":
            self.i += 1
            checks.append(self.both())
        if len(checks) == 1:
            return checks[0]
        return lambda view: any(c(view) for c in checks)

    def both(self) -> Check:
        checks = [self.unary()]
        while (t := self.peek()) is not None and t[1] == "&&" and t[0] == "op":
            self.i += 1
            checks.append(self.unary())
        if len(checks) == 1:
            return checks[0]
        return lambda view: all(c(view) for c in checks)

    def unary(self) -> Check:
        token = self.take()
        if token[0] == "op" and token[1] == "!":
            inner = self.unary()
            return lambda view: not inner(view)
        if token[0] == "op" and token[1] == "(":
            inner = self.either()
            close = self.take()
            if close[1] != ")" or close[0] != "op":
                raise self.fail(close, "')'")
            return inner
        if token[0] != "name":
            raise self.fail(token, "path, method or header.<name>")
        subject = _subject(token, self.text)
        op = self.take()
        if op[0] != "op" or op[1] not in ("==", "!=", "^=", "~"):
            raise self.fail(op, "==, !=, ^= or ~")
        literal = self.take()
        if literal[0] != "str":
            raise self.fail(literal, "a quoted string")
        return _comparison(subject, token[1], op[1], literal[1])


def _subject(token: tuple[str, str, int], text: str) -> Callable[[RequestView], str | None]:
    name = token[1]
    if name == "path":
        return lambda view: view.path
    if name == "method":
        return lambda view: view.method
    if name.startswith("header.") and _HEADER_NAME.match(name[7:]):
        header = name[7:].lower()
        return lambda view: view.header(header)
    raise ConditionError(f"unknown subject {name!r} at offset {token[2]} of {text!r} (path, method, header.<name>)")


def _comparison(subject: Callable[[RequestView], str | None], name: str, op: str, literal: str) -> Check:
    if name == "method":
        literal = literal.upper()
    if op == "==":
        return lambda view: subject(view) == literal
    if op == "!=":
        return lambda view: subject(view) != literal
    if op == "^=":
        def starts(view: RequestView) -> bool:
            value = subject(view)
            return value is not None and value.startswith(literal)
        return starts
    try:
        search = compile_rust(literal).search
    except RegexError as exc:
        raise ConditionError(str(exc)) from None

    def matches(view: RequestView) -> bool:
        value = subject(view)
        return value is not None and search(value) is not None
    return matches


def compile_condition(text: str) -> Check:
    """The condition as a function of a RequestView; ConditionError says what is wrong."""
    if not text.strip():
        raise ConditionError("empty condition (use null for 'always')")
    return _Parser(text).parse()
