"""Transformation units: Rust replacements, the condition language, templates, JSON Pointer edits,
header/query/path edits and the config problems they report (no sockets)."""

from __future__ import annotations

import re

import pytest

from kairos.config import ConfigError, parse_config
from kairos.errors import GatewayError
from kairos.transform import jsonpointer
from kairos.transform.condition import ConditionError, compile_condition
from kairos.transform.config import QueryEdit, RequestHeaderEdit, ResponseHeaderEdit, PathRewrite
from kairos.transform.edits import HeaderEdits, JsonEdits, PathRewriter, QueryEdits, StatusMap, group_expander
from kairos.transform.config import JsonEdit, StatusMapping
from kairos.transform.rustre import RegexError, compile_rust, translate
from kairos.transform.template import Template, TemplateError
from kairos.transform.view import RequestView


def view(path="/api/v1/users", method="GET", headers=(), query=b"", params=None, user=None, **extra):
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [(n.lower().encode(), v.encode()) for n, v in headers], "kairos.params": params or {},
             "kairos.request_id": "rid-1", "kairos.client_ip": "10.1.2.3", **extra}
    if user is not None:
        scope["kairos.user"] = user
    return RequestView(scope, "/api/{id}")


def replace(pattern: str, replacement: str, subject: str) -> str:
    regex = compile_rust(pattern)
    t = Template(replacement, groups=True)
    t.bind_groups(regex)
    return regex.sub(lambda m: t.render(None, match=m), subject)


# --- Rust replacement syntax ------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, replacement, subject, expected",
    [
        (r"^/api/v1/(.+)$", "/v2/$1", "/api/v1/users/7", "/v2/users/7"),
        (r"(\d+)", "${1}0", "a5", "a50"),
        (r"(\d+)", "$1a", "a5", "a"),  # Rust reads the group name '1a': no such group -> ''
        (r"(?P<id>\d+)", "<${id}>", "x42", "x<42>"),
        (r"(?<id>\d+)", "<$id>", "x42", "x<42>"),  # Rust's (?<name>) spelling
        (r"(\d)", "$$1", "7", "$1"),
        (r"(\d)", "cost: $", "7", "cost: $"),  # '$' before a non-name character is literal
        (r"(\d)", "${1", "7", None),  # Rust: literal '$' then '{1'; here '{' opens a template -> config error
        (r"(\d)", "$0$0", "7", "77"),
        (r"(a)|(b)", "[$2]", "a", "[]"),  # a group that did not take part -> ''
        (r"(\d)", "$9", "7", ""),  # beyond the pattern's groups -> ''
        (r"(\d)", r"\1\n", "7", r"\1\n"),  # backslashes are literal, unlike Python's templates
        (r"Mozilla/(\d+\.\d+)", "KairosGateway/$1", "Mozilla/5.0 (X11)", "KairosGateway/5.0 (X11)"),
        (r"o", "0", "foo", "f00"),  # every match of a header value
    ],
)
def test_rust_replacement(pattern, replacement, subject, expected):
    if expected is None:
        with pytest.raises(TemplateError):
            replace(pattern, replacement, subject)
        return
    assert replace(pattern, replacement, subject) == expected


def test_rust_dollar_is_end_of_text_only():
    assert compile_rust(r"^a$").search("a\n") is None
    assert re.search(r"^a$", "a\n") is not None  # Python's own '$' would have matched
    assert compile_rust(r"(?m)^a$").search("a\nb") is not None


def test_rust_regex_translation_and_refusals():
    assert translate(r"[$]") == "[$]"
    assert compile_rust(r"[[:digit:]]+").fullmatch("123")
    assert compile_rust(r"\$(\d)").search("$5").group(1) == "5"
    for bad in (r"(?=x)", r"(?<!x)y", r"(a)\1", "(unclosed"):
        with pytest.raises(RegexError):
            compile_rust(bad)


# --- templates --------------------------------------------------------------------------------


def test_templates_render_every_name():
    v = view(headers=[("X-User", "ann"), ("X-User", "bob")], query=b"q=a%20b&q=2", params={"id": "a%2Bb"},
             user={"sub": "u1", "roles": ["a", "b"], "n": 3})
    t = Template("{header.x-user}|{query.q}|{path.id}|{claim.sub}|{claim.roles}|{claim.n}|{claim.none}|"
                 "{request_id}|{client_ip}|{route}|{{x}}")
    assert t.render(v) == "ann|a b|a+b|u1|a,b|3||rid-1|10.1.2.3|/api/{id}|{x}"
    assert t.render(v, url=True) == "ann|a%20b|a%2Bb|u1|a%2Cb|3||rid-1|10.1.2.3|%2Fapi%2F%7Bid%7D|{x}"
    assert Template("plain {{text}}").constant == "plain {text}"


def test_header_names_in_templates_are_case_insensitive():
    assert Template("{header.X-User}").render(view(headers=[("x-user", "a")])) == "a"


@pytest.mark.parametrize("text", ["{nope}", "{header.}", "{a", "b}", "{path}", "{claims.sub}"])
def test_template_errors(text):
    with pytest.raises(TemplateError):
        Template(text)


def test_replacement_mixes_groups_and_templates():
    regex = compile_rust(r"^/api/(\w+)$")
    t = Template("/{header.x-tenant}/${1}/{{$1}}", groups=True)
    t.bind_groups(regex)
    m = regex.search("/api/users")
    assert t.render(view(headers=[("X-Tenant", "t 1")]), url=True, match=m) == "/t%201/users/{users}"


# --- conditions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "condition, expected",
    [
        ("path == '/api/v1/users'", True),
        ("path ^= '/api/v1/'", True),
        ("path ^= '/api/v2/'", False),
        ("path ~ 'users$'", True),
        ("path ~ '^/x'", False),
        ("method == 'get'", True),
        ("method != 'GET'", False),
        ("header.x-env == 'prod'", True),
        ("header.X-Env == \"prod\"", True),
        ("header.missing == ''", False),
        ("header.missing != 'a'", True),
        ("method == 'POST' || path ^= '/api'", True),
        ("method == 'POST' && path ^= '/api'", False),
        ("method == 'POST' && path ^= '/nope' || header.x-env == 'prod'", True),  # && binds tighter
        ("method == 'POST' && (path ^= '/nope' || header.x-env == 'prod')", False),
        ("!(method == 'POST')", True),
        ("path == 'it\\'s'", False),
    ],
)
def test_conditions(condition, expected):
    assert compile_condition(condition)(view(headers=[("X-Env", "prod")])) is expected


@pytest.mark.parametrize(
    "condition",
    ["", "path", "path ==", "path == /x", "status == '404'", "path == 'a' &&", "(path == 'a'", "path ~ '('",
     "path == 'a' path == 'b'", "__import__('os')", "path === 'a'"],
)
def test_condition_errors(condition):
    with pytest.raises(ConditionError):
        compile_condition(condition)


def test_status_map_first_match_wins():
    statuses = StatusMap([
        StatusMapping.model_validate({"from": 404, "to": 204, "condition": "method == 'DELETE'"}),
        StatusMapping.model_validate({"from": 404, "to": 200, "condition": None}),
    ])
    assert statuses.map(404, view(method="DELETE")) == 204
    assert statuses.map(404, view()) == 200
    assert statuses.map(500, view()) == 500


# --- JSON Pointer -----------------------------------------------------------------------------


def test_pointer_parsing():
    assert jsonpointer.parse_pointer("/a~1b/c~0d/0") == ("a/b", "c~d", "0")
    assert jsonpointer.parse_pointer("/") == ("",)
    for bad in ("", "a", "/a~2"):
        with pytest.raises(jsonpointer.PointerError):
            jsonpointer.parse_pointer(bad)


def json_edit(doc, *edits):
    JsonEdits([JsonEdit.model_validate(e) for e in edits]).apply(doc, view(headers=[("X-User", "ann")]))
    return doc


def test_json_edits_in_fixed_order():
    doc = {"a": 1, "b": {"c": 2}, "list": [1, 2], "keep": "x"}
    json_edit(
        doc,
        {"action": "append", "path": "/list", "value": 3},
        {"action": "add", "path": "/keep", "value": "not this"},
        {"action": "add", "path": "/new/deep", "value": "{header.x-user}"},
        {"action": "set", "path": "/b/c", "value": {"n": [1, "{request_id}"]}},
        {"action": "replace", "path": "/absent", "value": 1},
        {"action": "replace", "path": "/a", "value": 10},
        {"action": "rename", "path": "/keep", "to": "/kept"},
        {"action": "remove", "path": "/list/0"},
    )
    # rename runs before add: /keep is free again when add comes
    assert doc == {"a": 10, "b": {"c": {"n": [1, "rid-1"]}}, "list": [2, 3], "kept": "x", "keep": "not this",
                   "new": {"deep": "ann"}}


def test_json_edits_skip_what_does_not_fit():
    doc = [{"a": 1}, "s"]
    json_edit(
        doc,
        {"action": "remove", "path": "/5"},
        {"action": "remove", "path": "/1/x"},
        {"action": "set", "path": "/-", "value": {"z": 0}},
        {"action": "set", "path": "/00", "value": 0},
        {"action": "rename", "path": "/0/missing", "to": "/0/b"},
        {"action": "append", "path": "/0/a", "value": 2},
    )
    assert doc == [{"a": [1, 2]}, "s", {"z": 0}]


def test_json_values_are_fresh_per_request():
    edits = JsonEdits([JsonEdit.model_validate({"action": "set", "path": "/o", "value": {"k": [1]}}),
                       JsonEdit.model_validate({"action": "append", "path": "/o/k", "value": 2})])
    a, b = {}, {}
    edits.apply(a, view())
    edits.apply(b, view())
    assert a == b == {"o": {"k": [1, 2]}}


# --- headers, query, path ---------------------------------------------------------------------


def headers_after(edits, headers, side="request", **kw):
    model = RequestHeaderEdit if side == "request" else ResponseHeaderEdit
    compiled = HeaderEdits([model.model_validate(e) for e in edits], side)
    raw = [(n.lower().encode(), v.encode()) for n, v in headers]
    return [(n.decode(), v.decode()) for n, v in compiled.apply(raw, view(headers=headers, **kw))]


def test_header_actions_and_order():
    out = headers_after(
        [
            {"action": "append", "name": "X-Multi", "value": "3"},
            {"action": "add", "name": "X-Multi", "value": "never"},
            {"action": "add", "name": "X-New", "value": "{header.x-old}"},
            {"action": "set", "name": "X-Set", "value": "one"},
            {"action": "replace", "name": "User-Agent", "pattern": r"Mozilla/(\d+\.\d+)", "replacement": "KG/$1"},
            {"action": "replace", "name": "X-Absent", "value": "not added"},
            {"action": "replace", "name": "X-Old", "value": "replaced"},
            {"action": "rename", "name": "X-Old", "to": "X-Renamed"},
            {"action": "remove", "name": "Cookie"},
        ],
        [("Cookie", "a=1"), ("User-Agent", "Mozilla/5.0 (X11)"), ("X-Multi", "1"), ("X-Multi", "2"),
         ("X-Set", "a"), ("X-Set", "b"), ("X-Old", "o"), ("X-Renamed", "gone")],
    )
    assert out == [("user-agent", "KG/5.0 (X11)"), ("x-multi", "1"), ("x-multi", "2"), ("x-renamed", "o"),
                   ("x-set", "one"), ("x-new", "o"), ("x-multi", "3")]


def test_header_value_with_crlf_after_templating_is_dropped(caplog):
    out = headers_after([{"action": "set", "name": "X-Q", "value": "{query.q}"},
                         {"action": "add", "name": "X-Ok", "value": "fine"}],
                        [("X-Q", "old")], query=b"q=a%0d%0aInjected:%20yes")
    assert out == [("x-ok", "fine")]
    dropped = [r.fields for r in caplog.records if r.getMessage() == "transform_header_dropped"]
    assert [(f["header"], f["side"], f["request_id"]) for f in dropped] == [("X-Q", "request", "rid-1")]


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "Upgrade", "TE", "Host",
                                  "X-Request-ID", "bad name"])
def test_request_header_targets_refused(name):
    with pytest.raises(ValueError, match="cannot be transformed|not a valid header name"):
        RequestHeaderEdit.model_validate({"action": "set", "name": name, "value": "x"})
    with pytest.raises(ValueError, match="cannot be transformed|not a valid header name"):
        RequestHeaderEdit.model_validate({"action": "rename", "name": "X-A", "to": name})


def test_line_breaks_in_a_configured_header_value_are_config_errors():
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        RequestHeaderEdit.model_validate({"action": "set", "name": "X-A", "value": "a\r\nX-Evil: 1"})
    QueryEdit.model_validate({"action": "set", "name": "a", "value": "a\nb"})  # percent-encoded in a query


def test_response_may_edit_host_like_names_but_not_framing_nor_the_servers_own():
    ResponseHeaderEdit.model_validate({"action": "set", "name": "X-Request-ID", "value": "x"})
    ResponseHeaderEdit.model_validate({"action": "remove", "name": "Server"})  # kairos-rs's example
    with pytest.raises(ValueError):
        ResponseHeaderEdit.model_validate({"action": "remove", "name": "Content-Length"})
    for edit in ({"action": "set", "name": "Server", "value": "x"}, {"action": "rename", "name": "X-A", "to": "Date"}):
        with pytest.raises(ValueError, match="writes its own"):
            ResponseHeaderEdit.model_validate(edit)


def query_after(edits, query, **kw):
    compiled = QueryEdits([QueryEdit.model_validate(e) for e in edits])
    return compiled.apply(query, view(query=query.encode(), **kw))


def test_query_edits_keep_other_parameters_byte_for_byte():
    q = "b=%41%2f&debug=1&a=1&a=2&flag&debug=2&c=x+y"
    assert query_after([{"action": "remove", "name": "debug"}], q) == "b=%41%2f&a=1&a=2&flag&c=x+y"
    assert query_after([{"action": "add", "name": "api_key", "value": "secret123"}], q) == q + "&api_key=secret123"
    assert query_after([{"action": "add", "name": "a", "value": "3"}], q) == q
    assert query_after([{"action": "set", "name": "a", "value": "x y&z"}], q) == \
        "b=%41%2f&debug=1&a=x%20y%26z&flag&debug=2&c=x+y"
    assert query_after([{"action": "append", "name": "a", "value": "3"}], q) == q + "&a=3"
    assert query_after([{"action": "rename", "name": "debug", "to": "dbg"}], q) == \
        "b=%41%2f&dbg=1&a=1&a=2&flag&dbg=2&c=x+y"
    assert query_after([{"action": "replace", "name": "a", "pattern": "(\\d)", "replacement": "n$1"}], q) == \
        "b=%41%2f&debug=1&a=n1&a=n2&flag&debug=2&c=x+y"
    assert query_after([{"action": "set", "name": "new", "value": "{header.x-u}"}], "", headers=[("X-U", "a/b c")]) \
        == "new=a%2Fb%20c"


def test_query_names_are_percent_encoded_on_the_wire():
    assert query_after([{"action": "add", "name": "a b&c", "value": "1"}], "x=1") == "x=1&a%20b%26c=1"
    assert query_after([{"action": "rename", "name": "a b", "to": "c=d"}], "a+b=1&a%20b=2") == "c%3Dd=1&c%3Dd=2"


def rewrite(pattern, replacement, path, **kw):
    return PathRewriter(PathRewrite(pattern=pattern, replacement=replacement)).apply(path, view(path=path, **kw))


def test_path_rewrite():
    assert rewrite(r"^/api/v1/(.+)$", "/v2/$1", "/api/v1/users/7") == "/v2/users/7"
    assert rewrite(r"^/api/v1/(.+)$", "/v2/$1", "/other") is None
    assert rewrite(r"^/api/(?P<rest>.*)$", "/{header.x-tenant}/${rest}", "/api/a%20b",
                   headers=[("X-Tenant", "t 1")]) == "/t%201/a%20b"
    with pytest.raises(GatewayError):  # a slash from a template arrives encoded: refused like a capture's
        rewrite(r"^/api/(.*)$", "/{header.x-tenant}/$1", "/api/a", headers=[("X-Tenant", "t/1")])


@pytest.mark.parametrize("path", ["/api/v1/..", "/api/v1/a/%2e%2e/b", "/api/v1/a%2fb", "/api/v1/a%5Cb",
                                  "/api/v1/a\\b", "/api/v1/..;jsessionid=x/b", "/api/v1/a/%2E%2e;x"])
def test_unsafe_rewrites_are_400(path):
    with pytest.raises(GatewayError) as info:
        rewrite(r"^/api/v1/(.+)$", "/v2/$1", path)
    assert info.value.kind == "bad_request"


def test_rewrite_must_start_with_slash():
    with pytest.raises(GatewayError):
        rewrite(r"^/api/(.+)$", "$1", "/api/x")


# --- config problems, with JSON paths ---------------------------------------------------------


def route(**over):
    r = {"external_path": "/api/{id}", "internal_path": "/{id}", "methods": ["GET"], "host": "http://127.0.0.1",
         "port": 3001}
    r.update(over)
    return r


def problems(**over):
    with pytest.raises(ConfigError) as info:
        parse_config({"routers": [route(**over)]}, use_env=False)
    return info.value.problems


def test_config_problems_name_their_place():
    found = problems(
        request_transformation={
            "headers": [{"action": "add", "name": "X-A", "value": "{nope}"},
                        {"action": "frob", "name": "X-B"},
                        {"action": "set", "name": "Content-Length", "value": "1"}],
            "path": {"pattern": "(", "replacement": "/x/{nope}"},
            "query_params": [{"action": "set", "name": "a"}],
            "json": [{"action": "set", "path": "nope", "value": 1}],
        },
        response_transformation={"status_code_mappings": [{"from": 404, "to": 200, "condition": "status == '1'"}]},
    )
    text = "\n".join(found)
    assert "routers[0].request_transformation.headers[0].value: unknown template name {nope}" in text
    assert "routers[0].request_transformation.headers[1].action: unknown action 'frob'" in text
    assert "routers[0].request_transformation.headers[2]: 'Content-Length' cannot be transformed" in text
    assert "routers[0].request_transformation.path.pattern: invalid regex" in text
    assert "routers[0].request_transformation.path.replacement: unknown template name {nope}" in text
    assert "routers[0].request_transformation.query_params[0]: 'set' needs a 'value'" in text
    assert "routers[0].request_transformation.json[0].path:" in text
    assert "routers[0].response_transformation.status_code_mappings[0].condition: unknown subject 'status'" in text


def test_route_dependent_template_problems():
    found = problems(request_transformation={"headers": [
        {"action": "set", "name": "X-A", "value": "{path.nope}"},
        {"action": "set", "name": "X-B", "value": "{claim.sub}"}]})
    assert found == [
        "routers[0].request_transformation.headers[0].value: {path.nope} is not a parameter of external_path "
        "(its parameters: id)",
        "routers[0].request_transformation.headers[1].value: {claim.sub} needs auth_required: true "
        "(claims exist only on routes that verify a token)",
    ]


def test_the_example_config_loads():
    from pathlib import Path

    from kairos.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "transform.json", use_env=False)
    first, second = config.routers
    assert first.request_transformation.path.replacement == "/v2/$1"
    assert second.auth_required and second.response_transformation.max_json_body == 262144


def test_unknown_key_in_a_block():
    assert any("request_transformation.header: unknown key 'header' (did you mean 'headers'?)" in p
               for p in problems(request_transformation={"header": []}))


# --- properties -------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CAP = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


def rust_expand(m: re.Match, replacement: str) -> str:
    """A line-by-line port of the regex crate's `expand_str` (the reference)."""
    dst = []
    rep = replacement
    while rep:
        i = rep.find("$")
        if i == -1:
            break
        dst.append(rep[:i])
        rep = rep[i:]
        if rep[1:2] == "$":
            dst.append("$")
            rep = rep[2:]
            continue
        # find_cap_ref
        name, end = None, 0
        if len(rep) > 1 and rep[1] == "{":
            close = rep.find("}", 2)
            if close != -1:
                name, end = rep[2:close], close + 1
        else:
            k = 1
            while k < len(rep) and rep[k] in _CAP:
                k += 1
            if k > 1:
                name, end = rep[1:k], k
        if name is None:
            dst.append("$")
            rep = rep[1:]
            continue
        rep = rep[end:]
        if name.isdigit():
            n = int(name)
            dst.append((m.group(n) or "") if n <= m.re.groups else "")
        else:
            dst.append((m.group(name) or "") if name in m.re.groupindex else "")
    dst.append(rep)
    return "".join(dst)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["$", "a", "b", "1", "_", "0", "x", "-", "${1}", "${a}", "${a_1}", "${9}", "${}",
                                  "$$", "${x y}", "${01}"]), max_size=8).map("".join))
def test_replacement_expands_like_rust(replacement):
    regex = compile_rust(r"(?P<a>a+)(b)?(?P<a_1>x)?")
    m = regex.search("zaab")
    try:
        t = Template(replacement, groups=True)
    except TemplateError:
        return  # e.g. '$${1}': a '{' outside '${...}' opens a template here (Rust would take it literally)
    t.bind_groups(regex)
    assert t.render(None, match=m) == rust_expand(m, replacement)
    assert group_expander(t)(m) == rust_expand(m, replacement)  # the fast path used at run time


_PIECE = st.text(alphabet="ab=%2F+x&", min_size=0, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PIECE, max_size=6).map("&".join))
def test_query_edits_of_absent_names_leave_the_bytes_alone(query):
    assert query_after([{"action": "remove", "name": "zz"}, {"action": "rename", "name": "zz", "to": "yy"},
                        {"action": "replace", "name": "zz", "value": "v"}], query) == query
    added = query_after([{"action": "add", "name": "zz", "value": "1"}], query)
    assert added == (query + "&zz=1" if query else "zz=1")
