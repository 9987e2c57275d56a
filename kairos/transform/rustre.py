"""kairos-rs's regexes (Rust `regex` crate syntax) compiled with Python's `re`.

The two syntaxes agree on everything a route or header pattern normally uses
(classes, anchors, groups, `(?i)`, `(?P<name>...)`, counted repetition). The
differences handled here:

* `(?<name>...)`, Rust's other spelling of a named group, becomes `(?P<name>...)`;
* `$` matches only at the very end, as in Rust (Python's also matches before
  a final newline), unless the pattern sets `(?m)`;
* what Rust rejects and Python would accept (look-around, backreferences) is
  refused, so a pattern means the same thing in both gateways.

Replacements (`$1`, `${name}`, `$$`) are parsed by `template.parse(groups=True)`.
"""

from __future__ import annotations

import re


class RegexError(ValueError):
    pass


def translate(pattern: str) -> str:
    """The Python spelling of a Rust regex (raises RegexError for what Rust does not accept)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    multiline = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1 : i + 2]
            if not in_class and nxt.isdigit() and nxt != "0":
                raise RegexError(f"backreference '\\{nxt}' in {pattern!r}: Rust regexes have none")
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            elif ch == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i)
                if end != -1:  # POSIX class, e.g. [[:alpha:]]
                    out.append(_POSIX.get(pattern[i + 2 : end], pattern[i : end + 2]))
                    i = end + 2
                    continue
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            # ']' right after '[' or '[^' is a literal member
            if pattern.startswith("^", i + 1):
                out.append("^")
                i += 1
            if pattern.startswith("]", i + 1):
                out.append("\\]")
                i += 1
            i += 1
            continue
        if ch == "(" and pattern.startswith("(?", i):
            rest = pattern[i + 2 :]
            if rest.startswith(("=", "!", "<=", "<!")):
                raise RegexError(f"look-around in {pattern!r}: Rust regexes have none")
            if rest.startswith("<"):
                out.append("(?P<")
                i += 3
                continue
            flags = re.match(r"[a-zA-Z-]*", rest).group(0)  # type: ignore[union-attr]
            if "m" in flags.split("-")[0]:
                multiline = True
        if ch == "$" and not multiline:
            out.append(r"\Z")  # end of text only, like Rust's '$'
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


_POSIX = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "digit": "0-9", "lower": "a-z", "upper": "A-Z",
    "space": r"\s", "word": r"\w", "xdigit": "0-9A-Fa-f", "punct": r"!-/:-@\[-`{-~",
}


def compile_rust(pattern: str) -> re.Pattern[str]:
    """Compile a kairos-rs regex; RegexError says what is wrong."""
    try:
        return re.compile(translate(pattern))
    except re.error as exc:
        raise RegexError(f"invalid regex {pattern!r}: {exc}") from None
