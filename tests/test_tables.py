"""The read commands without a registry: argument parsing, table layout, and answers from a mock transport."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from mesh import tables
from mesh.tables import (
    CallSyntaxError,
    format_result,
    parse_arguments,
    parse_target,
    parse_value,
    print_agents,
    print_call,
    print_discover,
    print_runs,
    render,
)

from .conftest import free_port

# -- key=value ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("5", 5),
        ("-2.5", -2.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('{"a": {"b": 1}}', {"a": {"b": 1}}),
        ('"007"', "007"),
        ("hello world", "hello world"),
        ("", ""),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("[1, 2", "[1, 2"),
        ("a=b", "a=b"),
    ],
)
def test_a_value_is_json_when_it_reads_as_json_else_text(raw: str, value: object):
    parsed = parse_value(raw)
    assert parsed == value and type(parsed) is type(value)
    assert not (isinstance(parsed, float) and math.isnan(parsed))


def test_pairs_split_on_the_first_equals_sign():
    assert parse_arguments(["query=a=b", "k=3", "tags=[\"x\"]", "empty="]) == {
        "query": "a=b", "k": 3, "tags": ["x"], "empty": "",
    }


@pytest.mark.parametrize("pairs", [["novalue"], ["=5"], ["k=1", "k=2"]])
def test_malformed_pairs_are_refused(pairs: list[str]):
    with pytest.raises(CallSyntaxError):
        parse_arguments(pairs)


def test_target_splits_on_the_first_dot():
    assert parse_target("sandbox.call_operation") == ("sandbox", "call_operation")
    assert parse_target("a.b.c") == ("a", "b.c")
    for bad in ("librarian", ".search", "librarian."):
        with pytest.raises(CallSyntaxError, match=r"AGENT\.TOOL"):
            parse_target(bad)


# -- tables ---------------------------------------------------------------------------------------------


def test_columns_align_and_numbers_align_right():
    text = render(["NAME", "SCORE", "NOTE"], [["librarian", 0.5, "ok"], ["sandbox", 12.25, None]])
    assert text.splitlines() == [
        "NAME       SCORE  NOTE",
        "librarian   0.50  ok",
        "sandbox    12.25  -",
    ]


def test_rows_fit_the_width_by_shortening_the_widest_column():
    long = "Find passages about anything in the workspace documents, ranked by relevance " * 3
    lines = render(["TOOL", "STATUS", "DESCRIPTION"], [["librarian.search", "verified", long]], width=60).splitlines()
    assert all(len(line) <= 60 for line in lines)
    assert lines[1].startswith("librarian.search  verified  Find passages")
    assert lines[1].endswith("…")


def test_narrow_columns_keep_their_header_when_the_terminal_is_tiny():
    # Columns shrink to their header (at least 6 characters) and no further: the row overflows instead.
    lines = render(["AGENT", "DESCRIPTION"], [["librarian", "x" * 50]], width=10).splitlines()
    assert lines == ["AGENT   DESCRIPTION", "libra…  " + "x" * 10 + "…"]


def test_a_column_of_blanks_aligns_left():
    assert render(["A", "B"], [["x", None], ["y", None]]).splitlines() == ["A  B", "x  -", "y  -"]


def test_cells_are_one_line_and_trailing_space_is_dropped():
    text = render(["A", "B"], [["two\nlines", ""]])
    assert text.splitlines() == ["A          B", "two lines"]


def test_width_none_keeps_every_character():
    long = "y" * 500
    assert long in render(["X"], [[long]], width=None)


# -- results --------------------------------------------------------------------------------------------


def test_structured_content_replaces_its_text_serialization():
    result = {"content": [{"type": "text", "text": '{"words": 5, "sentences": 2}'}],
              "structuredContent": {"words": 5, "sentences": 2}, "isError": False}
    assert format_result(result) == '{\n  "words": 5,\n  "sentences": 2\n}'


def test_a_wrapped_return_value_shows_as_itself():
    greeting = {"content": [{"type": "text", "text": "Hello, Ada!"}], "structuredContent": {"result": "Hello, Ada!"}}
    assert format_result(greeting) == "Hello, Ada!"
    words = {"content": [{"type": "text", "text": "alpha"}, {"type": "text", "text": "beta"}],
             "structuredContent": {"result": ["alpha", "beta"]}}
    assert format_result(words) == json.dumps(["alpha", "beta"], indent=2)


def test_text_and_other_content_are_shown():
    result = {"content": [{"type": "text", "text": "line one"}, {"type": "image", "mimeType": "image/png", "data": ""},
                          {"type": "resource_link", "uri": "file:///x", "name": "x"}]}
    assert format_result(result) == "line one\n[image image/png]\n[resource file:///x]"


# -- commands against a mock registry --------------------------------------------------------------------

AGENTS = {"agents": [{
    "name": "librarian", "status": "verified", "endpoint": "http://127.0.0.1:5001/mcp",
    "reputation": {"score": 0.8123, "success": 1.0}, "breaker": {"state": "open", "retry_after": 12.5},
    "tools": [{"name": "search", "status": "verified", "description": "Find passages\nabout a topic.",
               "annotations": {}, "scopes": ["docs:read"]}],
}]}


def registry(handler) -> httpx.Client:
    return httpx.Client(base_url="http://registry.test", transport=httpx.MockTransport(handler))


def test_ls_prints_agents_then_tools(capsys):
    client = registry(lambda request: httpx.Response(200, json=AGENTS))
    assert print_agents("http://registry.test", client=client) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["AGENT", "STATUS", "REPUTATION", "BREAKER", "TOOLS", "ENDPOINT"]
    assert out[1].split() == ["librarian", "verified", "0.81", "open", "(12.5s)", "1", "http://127.0.0.1:5001/mcp"]
    assert out[3].split()[:2] == ["TOOL", "STATUS"]
    assert out[4] == "librarian.search  verified  Find passages about a topic."


def test_discover_sends_the_text_and_k(capsys):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.url.params)
        return httpx.Response(200, json={"results": [
            {"agent": "librarian", "tool": "search", "description": "Find passages", "score": 0.91, "reputation": 0.8},
        ]})

    assert print_discover("http://registry.test", "passages about X", 3, client=registry(handler)) == 0
    assert seen == {"q": "passages about X", "k": "3"}
    assert "librarian.search" in capsys.readouterr().out


def test_call_posts_typed_arguments_and_prints_the_result(capsys):
    sent = {}

    def handler(request: httpx.Request) -> httpx.Response:
        sent.update(path=request.url.path, body=json.loads(request.content))
        return httpx.Response(200, json={"run_id": "r1", "result": {
            "content": [{"type": "text", "text": "3 passages"}], "isError": False}})

    code = print_call("http://registry.test", "librarian.search", ["query=rug pull", "k=3"], client=registry(handler))
    assert code == 0
    assert sent == {"path": "/v1/invoke",
                    "body": {"agent": "librarian", "tool": "search", "arguments": {"query": "rug pull", "k": 3}}}
    captured = capsys.readouterr()
    assert captured.out == "3 passages\n" and "run r1" in captured.err


def test_a_tool_error_exits_non_zero_with_its_text_on_stderr(capsys):
    client = registry(lambda request: httpx.Response(200, json={"run_id": "r2", "result": {
        "content": [{"type": "text", "text": "Error: k must be positive"}], "isError": True}}))
    assert print_call("http://registry.test", "librarian.search", ["k=-1"], client=client) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "k must be positive" in captured.err


def test_a_problem_is_printed_as_its_title_and_detail(capsys):
    client = registry(lambda request: httpx.Response(403, headers={"content-type": "application/problem+json"}, json={
        "type": "about:blank", "title": "Denied by policy", "status": 403, "detail": "destructive tool"}))
    assert print_call("http://registry.test", "sandbox.reset", [], client=client) == 1
    assert capsys.readouterr().err.strip() == "mesh: Denied by policy: destructive tool"


def test_a_malformed_call_exits_2_without_asking_the_registry(capsys):
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    assert print_call("http://registry.test", "librarian", ["k=1"], client=registry(handler)) == 2
    assert "AGENT.TOOL" in capsys.readouterr().err


def test_runs_filters_by_agent_and_formats_each_run(capsys):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.url.params)
        return httpx.Response(200, json={"runs": [{
            "id": "76535fff-0722-4168-b736-160a18478e85", "caller": "user:local", "agent": "librarian",
            "tool": "search", "status": "ok", "latency_ms": 12.6, "policy_decision": "allow",
            "policy_rule": "default", "started_at": "2025-01-02T03:04:05+00:00", "log": "caller",
            "parent_run_id": None, "trace_id": None}]})

    assert print_runs("http://registry.test", 5, "librarian", client=registry(handler)) == 0
    assert seen == {"limit": "5", "agent": "librarian", "log": "caller"}  # one row per call by default
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["STARTED", "RUN", "LOG", "CALLER", "TOOL", "STATUS", "MS", "POLICY"]
    assert row.split()[2:] == ["76535fff", "caller", "user:local", "librarian.search", "ok", "13", "allow", "(default)"]


def test_no_registry_is_one_clear_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    for command, args in [(print_agents, ()), (print_discover, ("x",)), (print_runs, ()),
                          (print_call, ("a.b", []))]:
        assert command(url, *args) == 1
        err = capsys.readouterr().err
        assert err == f"mesh: no registry at {url} — start one with `mesh up` or `mesh registry run`\n"


def test_output_to_a_pipe_is_not_truncated(monkeypatch):
    monkeypatch.setattr(tables.sys.stdout, "isatty", lambda: False, raising=False)
    assert tables.terminal_width() is None


def test_values_are_read_by_the_tools_input_schema():
    schema = {"properties": {"topic": {"type": "string"}, "k": {"type": "integer"},
                             "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    assert parse_arguments(["topic=1", "k=3", "note=true", "other=[1]"], schema) == {
        "topic": "1", "k": 3, "note": "true", "other": [1]}


def test_colon_equals_is_always_json():
    assert parse_arguments(['topic:="1"', "tags:=[1, 2]", "q=a:=b"], {"properties": {"q": {"type": "string"}}}) == {
        "topic": "1", "tags": [1, 2], "q": "a:=b"}
    with pytest.raises(CallSyntaxError, match="takes JSON"):
        parse_arguments(["k:=three"])
