"""Tool entries: validation (through the real agent loader too), transport choice, session keys,
what messages may show, result conversion, log redaction, and how the plugin is registered."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
import textwrap

import agentrunner_mcp
import mcp_types
import pytest
from agentrunner_mcp import MCPToolType
from agentrunner_mcp.redaction import SecretRedactor
from agentrunner_mcp.servers import Server, public_url, transport_of
from agentrunner_mcp.tool_type import describe_content

from agentrunner.agent_loader import AgentConfigError, LoaderOptions, load_agent_text
from agentrunner.interfaces import ToolError
from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.schema import AuthConfig, ToolConfig

BEARER = AuthConfig(type="bearer_token", token="tok-abcdef")


def problems(**fields) -> list[tuple[str, str]]:
    return MCPToolType().validate(ToolConfig(name="t", type="mcp", **fields))


@pytest.mark.parametrize("fields", [
    {"url": "https://tools.example.com/mcp"},
    {"url": "http://127.0.0.1:8080/sse", "headers": {"X-Team": "a"}, "auth": BEARER},
    {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"], "env": {"DEBUG": "1"}},
])
def test_a_url_or_a_command_with_their_own_fields_is_valid(fields):
    assert problems(**fields) == []


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, [("url", "an mcp tool needs a url (streamable HTTP or SSE) or a command (a stdio server)")]),
    ({"url": "https://x.example/mcp", "command": "python"},
     [("command", "give either url (a remote server) or command (a stdio server), not both")]),
    ({"url": "ftp://x.example/mcp"}, [("url", "must be an http:// or https:// URL (got 'ftp://x.example/mcp')")]),
    ({"url": "https://user:pw@/mcp?key=s3cret"},
     [("url", "must be an http:// or https:// URL (got 'https:///mcp')")]),
    ({"command": "  "}, [("command", "must not be blank")]),
    ({"url": "https://x.example/mcp", "args": ["--stdio"], "env": {"K": "v"}},
     [("args", "only a stdio server (command) takes args"), ("env", "only a stdio server (command) takes env")]),
    ({"command": "python", "headers": {"X": "y"}, "auth": BEARER},
     [("headers", "only a remote server (url) takes headers"), ("auth", "only a remote server (url) takes auth")]),
    ({"command": "python", "parameters": {"type": "object"}},
     [("parameters", "not used by mcp tools: the server gives each tool's parameters")]),
])
def test_each_problem_names_its_field(fields, expected):
    assert problems(**fields) == expected


def test_the_agent_loader_reports_mcp_problems_by_field_path():
    registry = Registry.from_plugin_manager(
        make_plugin_manager(load_entry_points=False, extra_plugins=[(agentrunner_mcp, "mcp")]))
    text = textwrap.dedent("""\
        name: tools
        agent_type: assistant
        execution_mode: autonomous
        llm_config: {provider: echo, model: echo}
        system_prompt: Use the tools.
        tools:
          - {name: local, type: mcp, command: python, args: [server.py], headers: {X-Team: a}}
          - {name: nowhere, type: mcp}
          - {name: remote, type: mcp, url: "https://tools.example.com/sse", auth: {type: bearer_token, token: t}}
        """)
    with pytest.raises(AgentConfigError) as caught:
        load_agent_text(text, filename="tools.yaml", options=LoaderOptions(environ={}), registry=registry)
    assert str(caught.value).splitlines() == [
        "tools.yaml: tools[0].headers: only a remote server (url) takes headers",
        "tools.yaml: tools[1].url: an mcp tool needs a url (streamable HTTP or SSE) or a command (a stdio server)",
    ]


@pytest.mark.parametrize(("url", "transport"), [
    (None, "stdio"),
    ("https://tools.example.com/mcp", "streamable-http"),
    ("https://tools.example.com/", "streamable-http"),
    ("https://tools.example.com/sse", "sse"),
    ("https://tools.example.com/v1/sse/", "sse"),
    ("https://tools.example.com/sse?token=x", "sse"),
    ("https://tools.example.com/sse/mcp", "streamable-http"),
])
def test_the_transport_follows_the_url(url, transport):
    assert transport_of(url) == transport


def test_a_shown_url_has_no_user_info_and_no_query():
    assert public_url("https://user:pw@tools.example.com:8443/v1/mcp?key=s3cret#frag") == \
        "https://tools.example.com:8443/v1/mcp"
    assert public_url("http://[::1]:9000/sse") == "http://[::1]:9000/sse"


def test_entries_for_the_same_server_share_a_session_key():
    base = {"type": "mcp", "url": "https://tools.example.com/mcp", "headers": {"X-Team": "a"}, "auth": BEARER}
    one = Server.from_tool(ToolConfig(name="one", description="first", timeout=5, **base))
    two = Server.from_tool(ToolConfig(name="two", description="second", timeout=50, **base))
    assert one.key == two.key
    other_headers = Server.from_tool(ToolConfig(name="one", **{**base, "headers": {"X-Team": "b"}}))
    other_auth = Server.from_tool(ToolConfig(name="one", **{**base, "auth": AuthConfig(type="api_key", key="k123")}))
    assert len({one.key, other_headers.key, other_auth.key}) == 3

    stdio = {"type": "mcp", "command": "python", "args": ["s.py"], "env": {"A": "1"}}
    assert Server.from_tool(ToolConfig(name="a", **stdio)).key == Server.from_tool(ToolConfig(name="b", **stdio)).key
    assert Server.from_tool(ToolConfig(name="a", **stdio)).key != \
        Server.from_tool(ToolConfig(name="a", **{**stdio, "env": {"A": "2"}})).key


def test_scrub_removes_every_secret_of_the_server():
    server = Server.from_tool(ToolConfig(
        name="t", type="mcp", url="https://bob:hunter22@tools.example.com/mcp?api_key=k3y%2Fvalue",
        headers={"X-Secret": "header-secret"}, auth=AuthConfig(type="bearer_token", token="bearer-secret")))
    text = ("hunter22 header-secret bearer-secret k3y/value k3y%2Fvalue api_key=k3y%2Fvalue "
            "https://bob:hunter22@tools.example.com/mcp?api_key=k3y%2Fvalue")
    scrubbed = server.scrub(text)
    for secret in ("hunter22", "header-secret", "bearer-secret", "k3y"):
        assert secret not in scrubbed
    assert server.where == "https://tools.example.com/mcp"
    for secret in ("hunter22", "header-secret", "bearer-secret", "k3y"):
        assert secret not in repr(server)  # tracebacks that show locals must not reveal them either

    stdio = Server.from_tool(ToolConfig(name="t", type="mcp", command="srv", env={"TOKEN": "env-secret", "ON": "1"}))
    assert stdio.scrub("env-secret, 1") == "***, 1"  # values too short to be secrets stay readable
    assert stdio.where == "srv (stdio)"
    assert "env-secret" not in repr(stdio)


def test_the_redactor_cleans_library_log_records(caplog):
    redactor = SecretRedactor()
    logger = logging.getLogger("httpx2")
    logger.addFilter(redactor)
    try:
        redactor.register(["s3cret-key"])
        redactor.register(["s3cret-key"])
        with caplog.at_level(logging.INFO, logger="httpx2"):
            logger.info("HTTP Request: %s %s", "POST", "http://h/mcp?key=s3cret-key")
            try:
                raise ValueError("failed for url http://h/mcp?key=s3cret-key")
            except ValueError:
                logger.exception("Error in post_writer")
            redactor.unregister(["s3cret-key"])
            logger.info("still %s", "s3cret-key")  # one session still holds it
            redactor.unregister(["s3cret-key"])
            logger.info("released %s", "s3cret-key")
        assert [record.getMessage() for record in caplog.records] == [
            "HTTP Request: POST http://h/mcp?key=***", "Error in post_writer", "still ***", "released s3cret-key"]
        assert "s3cret-key" not in caplog.records[1].exc_text
    finally:
        logger.removeFilter(redactor)


def result(**fields) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(**fields)


def test_results_become_structured_content_text_or_tool_errors():
    tool_type = MCPToolType()
    text = mcp_types.TextContent(type="text", text="hello")
    assert tool_type._result(result(content=[text], structured_content={"result": 1})) == {"result": 1}
    assert tool_type._result(result(content=[text, text])) == "hello\nhello"
    assert tool_type._result(result(content=[])) == ""
    with pytest.raises(ToolError, match=r"^hello$"):
        tool_type._result(result(content=[text], is_error=True))
    with pytest.raises(ToolError, match="failed without saying why"):
        tool_type._result(result(content=[], is_error=True))


def test_an_answer_larger_than_tool_max_response_bytes_is_refused():
    tool_type = MCPToolType()
    tool_type.configure(type("Settings", (), {"tool_max_response_bytes": 10})())
    assert tool_type._result(result(content=[mcp_types.TextContent(type="text", text="0123456789")])) == "0123456789"
    with pytest.raises(ToolError, match=r"with 11 bytes, more than the 10 allowed \(TOOL_MAX_RESPONSE_BYTES\)"):
        tool_type._result(result(content=[mcp_types.TextContent(type="text", text="0123456789!")]))
    with pytest.raises(ToolError, match="answered with 16 bytes"):
        tool_type._result(result(content=[], structured_content={"k": "0123456"}))


def test_non_text_content_is_described_briefly():
    link = mcp_types.ResourceLink(type="resource_link", uri="file:///report.pdf", name="report",
                                  description="the report")
    audio = mcp_types.AudioContent(type="audio", data="AAAA", mime_type="audio/wav")
    assert describe_content(link) == "[resource link file:///report.pdf: the report]"
    assert describe_content(audio) == "[audio audio/wav, 3 bytes]"


def test_the_plugin_registers_the_mcp_tool_type_through_its_entry_point():
    [entry_point] = [ep for ep in importlib.metadata.entry_points(group="agentrunner") if ep.name == "mcp"]
    assert entry_point.value == "agentrunner_mcp"
    registry = Registry.from_plugin_manager(
        make_plugin_manager(load_entry_points=False, extra_plugins=[(agentrunner_mcp, "mcp")]))
    tool_type = registry.tool_types["mcp"]
    assert isinstance(tool_type, MCPToolType)
    assert tool_type.required_fields == ()


def test_importing_the_plugin_does_not_import_the_sdk():
    code = "import sys, agentrunner_mcp; print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'httpx2')))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
