"""kairos.routing: pattern parsing, precedence, methods, safety, templates.

Correctness only: no timing assertions here (see bench/route_lookup.py).
"""

from __future__ import annotations

import pytest

from kairos.routing import (
    Match,
    MethodNotAllowed,
    PathTemplate,
    Pattern,
    PatternError,
    Router,
    UnsafePath,
    parse_pattern,
)


def target_of(router: Router, method: str, path: str):
    result = router.match(method, path)
    assert isinstance(result, Match), (method, path, result)
    return result.target


# --------------------------------------------------------------------------- parse_pattern


def test_parse_pattern_fields():
    p = parse_pattern("/api/users/{id}/files/{rest:path}")
    assert isinstance(p, Pattern)
    assert p.text == "/api/users/{id}/files/{rest:path}"
    assert p.param_names == ("id", "rest")
    assert p.shape == "/api/users/{}/files/{:path}"
    assert p.static_count == 3


def test_parse_pattern_root_and_trailing_slash():
    assert parse_pattern("/").shape == "/"
    assert parse_pattern("/").static_count == 0
    assert parse_pattern("/api/users/").shape == "/api/users/"
    assert parse_pattern("/api/users/").shape != parse_pattern("/api/users").shape


def test_parse_pattern_static_is_decoded_for_shape():
    assert parse_pattern("/api/us%65rs").shape == parse_pattern("/api/users").shape


@pytest.mark.parametrize(
    "text, message",
    [
        ("api/users", "does not start with '/'"),
        ("", "does not start with '/'"),
        ("/api/../users", "'..' segment"),
        ("/api/./users", "'.' segment"),
        ("/api/%2e%2E/users", "dot segments are not allowed"),
        ("/api/{}", "empty placeholder '{}'"),
        ("/api/{id", "placeholder '{id' is not closed"),
        ("/api/id}", "stray '}'"),
        ("/api/}{id}", "stray '}'"),
        ("/api/{a b}", "'a b'"),
        ("/api/{1x}", "'1x'"),
        ("/api/x{id}", "only part of the segment 'x{id}'"),
        ("/api/{id}.json", "only part of the segment '{id}.json'"),
        ("/api/{id}/x/{id}", "'id' is used twice"),
        ("/api/{rest:path}/x", "must be the last segment"),
        ("/api/{id:int}", "only ':path' is supported"),
        ("/api//users", "empty segment ('//')"),
        ("//", "empty segment ('//')"),
    ],
)
def test_parse_pattern_errors(text, message):
    with pytest.raises(PatternError) as exc:
        parse_pattern(text)
    assert message in str(exc.value)


def test_pattern_error_is_a_value_error():
    assert issubclass(PatternError, ValueError)


def test_unknown_converter_message_names_the_converter():
    with pytest.raises(PatternError, match=r"unknown converter ':int' in '\{id:int\}'"):
        parse_pattern("/api/{id:int}")


def test_non_identifier_message():
    with pytest.raises(PatternError, match="is not a valid identifier"):
        parse_pattern("/api/{a b}")


# --------------------------------------------------------------------------- shape conflicts


def test_same_shape_overlapping_methods_is_an_error():
    with pytest.raises(PatternError) as exc:
        Router([("/users/{id}", ["GET", "POST"], 1), ("/users/{uid}", ["POST", "PUT"], 2)])
    msg = str(exc.value)
    assert "'/users/{id}'" in msg and "'/users/{uid}'" in msg
    assert "POST" in msg and "GET" not in msg and "PUT" not in msg
    assert "/users/{}" in msg


def test_same_shape_encoded_static_conflicts():
    with pytest.raises(PatternError):
        Router([("/users", ["GET"], 1), ("/us%65rs", ["GET"], 2)])


def test_same_shape_different_methods_is_fine():
    r = Router([("/users/{id}", ["GET"], "get"), ("/users/{uid}", ["DELETE"], "delete")])
    assert r.match("GET", "/users/7") == Match("get", {"id": "7"})
    assert r.match("DELETE", "/users/7") == Match("delete", {"uid": "7"})


def test_explicit_head_does_not_conflict_with_get():
    r = Router([("/a", ["GET"], "get"), ("/a", ["HEAD"], "head")])
    assert target_of(r, "HEAD", "/a") == "head"
    assert target_of(r, "GET", "/a") == "get"


def test_different_shapes_same_methods_is_fine():
    Router([("/users/{id}", ["GET"], 1), ("/users/me", ["GET"], 2), ("/users/{id}/x", ["GET"], 3)])


# --------------------------------------------------------------------------- precedence


def test_static_beats_param_regardless_of_order():
    for entries in (
        [("/users/{id}", ["GET"], "param"), ("/users/me", ["GET"], "static")],
        [("/users/me", ["GET"], "static"), ("/users/{id}", ["GET"], "param")],
    ):
        r = Router(entries)
        assert target_of(r, "GET", "/users/me") == "static"
        assert r.match("GET", "/users/42") == Match("param", {"id": "42"})


def test_param_beats_path_capture():
    for entries in (
        [("/f/{rest:path}", ["GET"], "path"), ("/f/{name}", ["GET"], "param")],
        [("/f/{name}", ["GET"], "param"), ("/f/{rest:path}", ["GET"], "path")],
    ):
        r = Router(entries)
        assert target_of(r, "GET", "/f/a") == "param"
        assert r.match("GET", "/f/a/b") == Match("path", {"rest": "a/b"})


def test_more_static_segments_earlier_wins_regardless_of_order():
    entries = [
        ("/{a}/{b}/{c}", ["GET"], "ppp"),
        ("/{a}/{b}/c", ["GET"], "pps"),
        ("/{a}/b/{c}", ["GET"], "psp"),
        ("/a/{b}/{c}", ["GET"], "spp"),
        ("/a/{rest:path}", ["GET"], "s-path"),
    ]
    for order in (entries, list(reversed(entries)), entries[2:] + entries[:2]):
        r = Router(order)
        assert target_of(r, "GET", "/a/b/c") == "spp"
        assert target_of(r, "GET", "/x/b/c") == "psp"
        assert target_of(r, "GET", "/x/y/c") == "pps"
        assert target_of(r, "GET", "/x/y/z") == "ppp"
        assert target_of(r, "GET", "/a/b/c/d") == "s-path"


def test_backtracking_from_static_branch():
    r = Router([("/a/{x}/c", ["GET"], "param"), ("/a/b/d", ["GET"], "static")])
    assert r.match("GET", "/a/b/c") == Match("param", {"x": "b"})
    assert target_of(r, "GET", "/a/b/d") == "static"
    assert r.match("GET", "/a/b/e") is None


def test_backtracking_to_path_capture():
    r = Router([("/a/b/c", ["GET"], "static"), ("/a/{rest:path}", ["GET"], "path")])
    assert r.match("GET", "/a/b/x") == Match("path", {"rest": "b/x"})
    assert r.match("GET", "/a/b") == Match("path", {"rest": "b"})
    assert target_of(r, "GET", "/a/b/c") == "static"


def test_deep_backtracking():
    r = Router(
        [
            ("/a/b/c/d", ["GET"], 1),
            ("/a/{x}/c/e", ["GET"], 2),
            ("/{y}/b/{z}/f", ["GET"], 3),
        ]
    )
    assert target_of(r, "GET", "/a/b/c/d") == 1
    assert r.match("GET", "/a/b/c/e") == Match(2, {"x": "b"})
    assert r.match("GET", "/a/b/c/f") == Match(3, {"y": "a", "z": "c"})


# --------------------------------------------------------------------------- methods


def test_head_allowed_where_get_is():
    r = Router([("/a", ["GET"], "a")])
    assert target_of(r, "HEAD", "/a") == "a"
    assert r.match("POST", "/a") == MethodNotAllowed(("GET", "HEAD"))


def test_405_allow_is_sorted_union():
    r = Router(
        [
            ("/users/me", ["GET"], 1),
            ("/users/{id}", ["PUT", "DELETE"], 2),
            ("/users/{rest:path}", ["PATCH"], 3),
            ("/other", ["POST"], 4),
        ]
    )
    result = r.match("POST", "/users/me")
    assert isinstance(result, MethodNotAllowed)
    assert result.allow == ("DELETE", "GET", "HEAD", "PATCH", "PUT")


def test_404_when_no_pattern_matches():
    r = Router([("/users/{id}", ["GET"], 1)])
    assert r.match("GET", "/nope") is None
    assert r.match("POST", "/nope") is None
    assert r.match("GET", "/users") is None
    assert r.match("GET", "/users/1/2") is None


def test_less_specific_pattern_takes_other_methods():
    r = Router([("/users/me", ["GET"], "me"), ("/users/{id}", ["POST"], "by-id")])
    assert target_of(r, "GET", "/users/me") == "me"
    assert r.match("POST", "/users/me") == Match("by-id", {"id": "me"})
    assert r.match("GET", "/users/42") == MethodNotAllowed(("POST",))


def test_less_specific_fallback_after_deeper_match():
    r = Router([("/a/b/c", ["GET"], "static"), ("/a/{rest:path}", ["DELETE"], "path")])
    assert r.match("DELETE", "/a/b/c") == Match("path", {"rest": "b/c"})
    assert r.match("PUT", "/a/b/c") == MethodNotAllowed(("DELETE", "GET", "HEAD"))


def test_methods_are_normalised_to_uppercase():
    r = Router([("/a", ["get"], 1)])
    assert target_of(r, "GET", "/a") == 1


def test_pattern_objects_are_accepted():
    r = Router([(parse_pattern("/a/{x}"), ["GET"], 1)])
    assert r.match("GET", "/a/b") == Match(1, {"x": "b"})


# --------------------------------------------------------------------------- paths


def test_trailing_slash_is_significant():
    r = Router([("/api/users", ["GET"], "no-slash"), ("/api/items/", ["GET"], "slash")])
    assert target_of(r, "GET", "/api/users") == "no-slash"
    assert r.match("GET", "/api/users/") is None
    assert target_of(r, "GET", "/api/items/") == "slash"
    assert r.match("GET", "/api/items") is None


def test_root_matches_only_root():
    r = Router([("/", ["GET"], "root"), ("/{name}", ["GET"], "name")])
    assert target_of(r, "GET", "/") == "root"
    assert r.match("GET", "//") is None
    assert r.match("GET", "/x") == Match("name", {"name": "x"})
    assert r.match("GET", "") is None
    assert r.match("GET", "x") is None


def test_param_does_not_match_empty_segment():
    r = Router([("/a/{x}", ["GET"], 1), ("/a/{x}/b", ["GET"], 2)])
    assert r.match("GET", "/a/") is None
    assert r.match("GET", "/a//b") is None


def test_path_capture_multi_segment():
    r = Router([("/files/{rest:path}", ["GET"], "files")])
    assert r.match("GET", "/files/a") == Match("files", {"rest": "a"})
    assert r.match("GET", "/files/a/b/c.txt") == Match("files", {"rest": "a/b/c.txt"})
    assert r.match("GET", "/files/a/b/") == Match("files", {"rest": "a/b/"})


def test_path_capture_must_not_be_empty():
    r = Router([("/files/{rest:path}", ["GET"], "files")])
    assert r.match("GET", "/files/") is None
    assert r.match("GET", "/files") is None
    assert r.match("GET", "/files//x") is None


def test_percent_encoded_static_segment_matches():
    r = Router([("/api/users", ["GET"], "users"), ("/api/users/{id}", ["GET"], "user")])
    assert target_of(r, "GET", "/api/us%65rs") == "users"
    assert target_of(r, "GET", "/%61pi/us%65rs") == "users"
    assert r.match("GET", "/api/us%65rs/a%20b") == Match("user", {"id": "a%20b"})


def test_static_pattern_with_encoded_char():
    r = Router([("/a%20b", ["GET"], 1)])
    assert target_of(r, "GET", "/a%20b") == 1
    assert target_of(r, "GET", "/a b") == 1


def test_params_are_raw_byte_for_byte():
    r = Router([("/files/{name}", ["GET"], 1), ("/blob/{rest:path}", ["GET"], 2)])
    assert r.match("GET", "/files/a%20b").params == {"name": "a%20b"}
    assert r.match("GET", "/files/caf%C3%A9").params == {"name": "caf%C3%A9"}
    assert r.match("GET", "/files/a+b").params == {"name": "a+b"}
    assert r.match("GET", "/blob/x%20y/z%3Fq").params == {"rest": "x%20y/z%3Fq"}


def test_params_dict_is_fresh_per_match():
    r = Router([("/a/{x}", ["GET"], 1), ("/b", ["GET"], 2)])
    m1 = r.match("GET", "/b")
    m1.params["poison"] = "1"
    assert r.match("GET", "/b").params == {}
    m2 = r.match("GET", "/a/1")
    m2.params["x"] = "changed"
    assert r.match("GET", "/a/1").params == {"x": "1"}


def test_match_is_frozen():
    m = Router([("/a", ["GET"], 1)]).match("GET", "/a")
    with pytest.raises(AttributeError):
        m.target = 2  # type: ignore[misc]


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    "path",
    [
        "/files/a%2Fb",
        "/files/a%2fb",
        "/files/a%5Cb",
        "/files/a%5cb",
        "/files/a\\b",
        "/files/..",
        "/files/.",
        "/files/%2e%2e",
        "/files/%2E%2E",
        "/files/.%2e",
        "/files/%2e",
    ],
)
def test_unsafe_single_param(path):
    r = Router([("/files/{name}", ["GET"], 1)])
    with pytest.raises(UnsafePath) as exc:
        r.match("GET", path)
    assert "'name'" in str(exc.value)


def test_unsafe_messages():
    r = Router([("/files/{name}", ["GET"], 1)])
    with pytest.raises(UnsafePath, match="path parameter 'name' contains an encoded slash"):
        r.match("GET", "/files/a%2Fb")
    with pytest.raises(UnsafePath, match="backslash"):
        r.match("GET", "/files/a%5cb")
    with pytest.raises(UnsafePath, match="backslash"):
        r.match("GET", "/files/a\\b")
    with pytest.raises(UnsafePath, match=r"'\.\.'"):
        r.match("GET", "/files/%2e%2e")


@pytest.mark.parametrize(
    "path",
    [
        "/static/a/../b",
        "/static/../etc/passwd",
        "/static/a/..",
        "/static/./a",
        "/static/a/%2e%2e/b",
        "/static/a/%2E./b",
        "/static/a%2Fb/c",
        "/static/a/b%5C..",
        "/static/a\\b/c",
    ],
)
def test_unsafe_path_capture_checks_every_segment(path):
    r = Router([("/static/{rest:path}", ["GET"], 1)])
    with pytest.raises(UnsafePath):
        r.match("GET", path)


def test_unsafe_in_multi_param_route():
    r = Router([("/a/{x}/b/{y}", ["GET"], 1)])
    with pytest.raises(UnsafePath, match="'y'"):
        r.match("GET", "/a/ok/b/%2e%2e")


@pytest.mark.parametrize(
    "path, params",
    [
        ("/files/.hidden", {"name": ".hidden"}),
        ("/files/a.b", {"name": "a.b"}),
        ("/files/...", {"name": "..."}),
        ("/files/%2e%2e%2e", {"name": "%2e%2e%2e"}),
        ("/files/a%2Eb", {"name": "a%2Eb"}),
        ("/files/100%25", {"name": "100%25"}),
    ],
)
def test_dots_that_are_not_dot_segments_are_fine(path, params):
    r = Router([("/files/{name}", ["GET"], 1)])
    assert r.match("GET", path) == Match(1, params)


def test_uncaptured_dot_dot_does_not_match_static():
    r = Router([("/a/b", ["GET"], 1), ("/b", ["GET"], 2)])
    assert r.match("GET", "/a/../b") is None
    assert r.match("GET", "/a/%2e%2e/b") is None


def test_unsafe_only_for_the_chosen_match():
    # '..' fails the static route, the param route captures it -> unsafe
    r = Router([("/a/b", ["GET"], 1), ("/a/{x}", ["GET"], 2)])
    with pytest.raises(UnsafePath):
        r.match("GET", "/a/..")
    assert target_of(r, "GET", "/a/b") == 1


# --------------------------------------------------------------------------- PathTemplate


def test_template_render():
    t = PathTemplate("/v1/{id}", ["id"])
    assert t.render({"id": "42"}) == "/v1/42"
    assert t.render({"id": "a%20b"}) == "/v1/a%20b"


def test_template_partial_segments_and_repeats():
    t = PathTemplate("/v1/item-{id}.json/{id}", ["id", "other"])
    assert t.render({"id": "7", "other": "x"}) == "/v1/item-7.json/7"
    assert t.param_names == ("id",)


def test_template_path_capture_written_plainly():
    t = PathTemplate("/files/{rest}", ["rest"])
    r = Router([("/static/{rest:path}", ["GET"], t)])
    m = r.match("GET", "/static/a/b%20c/d.txt")
    assert m.target.render(m.params) == "/files/a/b%20c/d.txt"


def test_template_without_placeholders():
    t = PathTemplate("/health", ["id"])
    assert t.render({"id": "1"}) == "/health"
    assert t.render({}) == "/health"


def test_template_multiple_params():
    t = PathTemplate("/{a}/x/{b}/{c}", ("a", "b", "c"))
    assert t.render({"a": "1", "b": "2", "c": "3/4"}) == "/1/x/2/3/4"


@pytest.mark.parametrize(
    "text, available, message",
    [
        ("v1/{id}", ["id"], "does not start with '/'"),
        ("", [], "does not start with '/'"),
        ("/v1/{user}", ["id"], "internal_path uses {user} but external_path has no such placeholder"),
        ("/v1/{id", ["id"], "placeholder '{id' is not closed"),
        ("/v1/id}", ["id"], "stray '}'"),
        ("/v1/{}", ["id"], "empty placeholder '{}'"),
        ("/v1/{a b}", ["id"], "is not a valid identifier"),
        ("/v1/{rest:path}", ["rest"], "write it plainly as '{rest}'"),
    ],
)
def test_template_errors(text, available, message):
    with pytest.raises(PatternError) as exc:
        PathTemplate(text, available)
    assert message in str(exc.value)


# --------------------------------------------------------------------------- scale


def test_large_table_matches_correctly():
    entries = []
    for i in range(10_000):
        entries.append((f"/api/svc{i}/users/{{id}}", ["GET", "POST"], ("users", i)))
        entries.append((f"/api/svc{i}/health", ["GET"], ("health", i)))
    assert len(entries) == 20_000
    r = Router(entries)
    assert len(r) == 20_000
    for i in (0, 1, 4_999, 5_000, 9_998, 9_999):
        assert r.match("GET", f"/api/svc{i}/users/{i * 7}") == Match(("users", i), {"id": str(i * 7)})
        assert r.match("POST", f"/api/svc{i}/users/x") == Match(("users", i), {"id": "x"})
        assert target_of(r, "HEAD", f"/api/svc{i}/health") == ("health", i)
        assert r.match("POST", f"/api/svc{i}/health") == MethodNotAllowed(("GET", "HEAD"))
        assert r.match("GET", f"/api/svc{i}/other") is None
    assert r.match("GET", "/api/svc10000/users/1") is None
    assert r.match("GET", "/api/svc5/users/") is None


# --------------------------------------------------------------------------- hardening (issue 10)


@pytest.mark.parametrize(
    "path",
    [
        "/files/..;",
        "/files/.;",
        "/files/..;jsessionid=x",
        "/files/.;jsessionid=x",
        "/files/%2e%2e;x",
        "/files/%2E.;a=b",
        "/files/..%3bx",
        "/files/..%3B",
        "/files/%2e%3Bx",
    ],
)
def test_dot_segment_with_a_java_path_parameter_is_unsafe(path):
    # Tomcat and Spring drop ';params' before resolving dot segments: '..;' is '..' to them.
    r = Router([("/files/{name}", ["GET"], 1)])
    with pytest.raises(UnsafePath, match=r"'\.\.'"):
        r.match("GET", path)


@pytest.mark.parametrize("path", ["/static/a/..;/b", "/static/.;x=1/etc", "/static/a/%2e%2e%3b/b", "/static/a/..;"])
def test_dot_segment_with_a_java_path_parameter_in_a_path_capture_is_unsafe(path):
    r = Router([("/static/{rest:path}", ["GET"], 1)])
    with pytest.raises(UnsafePath):
        r.match("GET", path)


@pytest.mark.parametrize("value", ["a;b", "...;x", "..x;y", ";..", "x.;", "%2e%2e%2e;x"])
def test_semicolons_away_from_dot_segments_are_fine(value):
    r = Router([("/files/{name}", ["GET"], 1), ("/multi/{a}/{b}", ["GET"], 2)])
    assert r.match("GET", "/files/" + value) == Match(1, {"name": value})
    assert r.match("GET", f"/multi/{value}/x") == Match(2, {"a": value, "b": "x"})


def test_a_pattern_with_30000_placeholders_is_refused():
    text = "/" + "/".join(f"{{p{i}}}" for i in range(30_000))
    with pytest.raises(PatternError, match="30000 segments.*at most 128"):
        parse_pattern(text)


def test_the_longest_allowed_pattern_compiles_and_matches_a_miss_without_recursion_trouble():
    from kairos.routing import MAX_SEGMENTS

    text = "/" + "/".join(f"{{p{i}}}" for i in range(MAX_SEGMENTS))
    pattern = parse_pattern(text)
    assert len(pattern.param_names) == MAX_SEGMENTS
    r = Router([(pattern, ["GET"], 1), ("/{rest:path}", ["PUT"], 2)])
    deep = "/" + "/".join("a" for _ in range(MAX_SEGMENTS))
    assert target_of(r, "GET", deep) == 1
    # a miss explores the whole trie depth-first (the slow path), still fine
    assert r.match("POST", deep) == MethodNotAllowed(("GET", "HEAD", "PUT"))
    assert r.match("POST", deep * 50) == MethodNotAllowed(("PUT",))


def test_template_compilation_is_linear_in_its_placeholders():
    # one name used 30,000 times: the template keeps a set of names, not a scanned list
    text = "/" + "/".join("{a}" for _ in range(30_000))
    template = PathTemplate(text, ["a"])
    assert template.param_names == ("a",)
    assert template.render({"a": "x"}) == "/" + "/".join("x" for _ in range(30_000))
