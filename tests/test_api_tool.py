"""The ``api`` tool type against a local HTTP server: requests, auth of each type, limits."""

from __future__ import annotations

import asyncio
import base64
import textwrap

import pytest
from aiohttp import web

from agentrunner.agent_loader import LoaderOptions, load_agent_text
from agentrunner.default_plugins.api_tool import ApiToolType
from agentrunner.interfaces import ToolError
from agentrunner.plugins import Registry, make_plugin_manager

SECRET = "tok-canary-5f1e"


class Server:
    """Records what each request carried; answers per path."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.tokens_issued = 0
        self.valid_token = "access-1"
        self.app = web.Application()
        self.app.router.add_route("*", "/echo", self.echo)
        self.app.router.add_post("/token", self.token)
        self.app.router.add_get("/secure", self.secure)
        self.app.router.add_get("/big", self.big)
        self.app.router.add_get("/fail", self.fail)
        self.app.router.add_get("/hop", self.hop)
        self.app.router.add_get("/away", self.away)
        self.app.router.add_get("/text", self.text)

    async def echo(self, request):
        body = await request.json() if request.can_read_body else None
        record = {"method": request.method, "query": dict(request.query), "json": body,
                  "headers": dict(request.headers), "path": request.path}
        self.requests.append(record)
        return web.json_response({"got": {"method": request.method, "query": dict(request.query), "json": body}})

    async def token(self, request):
        form = await request.post()
        self.requests.append({"path": "/token", "form": dict(form), "headers": dict(request.headers)})
        self.tokens_issued += 1
        self.valid_token = f"access-{self.tokens_issued}"
        return web.json_response({"access_token": self.valid_token, "token_type": "bearer", "expires_in": 3600})

    async def secure(self, request):
        self.requests.append({"path": "/secure", "headers": dict(request.headers)})
        if request.headers.get("Authorization") != f"Bearer {self.valid_token}":
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"ok": True})

    async def big(self, request):
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b"x" * 1024)
        return response

    async def fail(self, request):
        return web.Response(status=503, text="upstream down")

    async def hop(self, request):
        raise web.HTTPFound("/echo?hopped=1")

    async def away(self, request):
        raise web.HTTPFound("http://127.0.0.2:9/steal")

    async def text(self, request):
        return web.Response(text="plain words")


@pytest.fixture
async def server(aiohttp_server):
    state = Server()
    # a third party's API: what it logs of the requests it gets is not agentrunner's to redact
    running = await aiohttp_server(state.app, access_log=None)
    state.url = str(running.make_url("")).rstrip("/")
    return state


@pytest.fixture
async def tools():
    tool_type = ApiToolType()
    tool_type.configure(type("S", (), {"tool_max_response_bytes": 16 * 1024})())
    yield tool_type
    await tool_type.aclose()


def load_tool(yaml_tools: str, environ: dict | None = None):
    """Tool entries as the loader makes them (``${VAR}`` filled from ``environ``)."""
    text = textwrap.dedent("""\
        name: caller
        agent_type: assistant
        execution_mode: autonomous
        llm_config: {temperature: 0.5}
        system_prompt: Call.
        tools:
        """) + textwrap.indent(textwrap.dedent(yaml_tools), "  ")
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entry_points=False))
    agent, _ = load_agent_text(text, filename="caller.yaml", options=LoaderOptions(environ=environ or {}),
                               registry=registry)
    return agent.tools


async def call(tool_type, entry, arguments):
    (tool,) = await tool_type.open(entry)
    return await tool.call(arguments)


async def test_post_sends_the_arguments_as_json_with_bearer_auth_from_the_environment(server, tools):
    (entry,) = load_tool(f"""\
        - name: create
          type: api
          url: {server.url}/echo
          description: Create a ticket.
          parameters: {{type: object, properties: {{title: {{type: string}}}}, required: [title]}}
          headers: {{X-Team: support}}
          auth: {{type: bearer_token, token: "${{TICKET_TOKEN}}"}}
        """, {"TICKET_TOKEN": SECRET})
    (tool,) = await tools.open(entry)
    assert tool.definition.name == "create" and tool.definition.description == "Create a ticket."
    assert tool.definition.parameters["required"] == ["title"]
    result = await tool.call({"title": "printer on fire"})
    assert result == {"got": {"method": "POST", "query": {}, "json": {"title": "printer on fire"}}}
    headers = server.requests[-1]["headers"]
    assert headers["Authorization"] == f"Bearer {SECRET}" and headers["X-Team"] == "support"


async def test_get_sends_the_arguments_as_the_query_with_an_api_key(server, tools):
    (entry,) = load_tool(f"""\
        - name: search
          type: api
          method: get
          url: {server.url}/echo
          auth: {{type: api_key, key: "{SECRET}", header: X-Key}}
        """)
    result = await call(tools, entry, {"q": "refund", "limit": 5, "exact": True})
    assert result["got"]["query"] == {"q": "refund", "limit": "5", "exact": "true"}
    assert server.requests[-1]["headers"]["X-Key"] == SECRET


async def test_oauth2_fetches_a_token_once_and_renews_it_once_after_a_401(server, tools):
    (entry,) = load_tool(f"""\
        - name: secure
          type: api
          method: GET
          url: {server.url}/secure
          auth: {{type: oauth2, token_url: {server.url}/token, client_id: app, client_secret: "{SECRET}",
                  scopes: [read, write]}}
        """)
    assert await call(tools, entry, {}) == {"ok": True}
    assert await call(tools, entry, {}) == {"ok": True}
    token_requests = [r for r in server.requests if r["path"] == "/token"]
    assert len(token_requests) == 1  # cached
    assert token_requests[0]["form"] == {"grant_type": "client_credentials", "scope": "read write"}
    assert token_requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(
        f"app:{SECRET}".encode()).decode()
    server.valid_token = "rotated"  # the server revoked the token: 401, a new token, one retry
    server.tokens_issued = 9
    assert await call(tools, entry, {}) == {"ok": True}
    assert len([r for r in server.requests if r["path"] == "/token"]) == 2


async def test_a_refused_token_request_is_an_error_without_the_secret(server, tools):
    (entry,) = load_tool(f"""\
        - name: secure
          type: api
          url: {server.url}/secure
          auth: {{type: oauth2, token_url: {server.url}/nothing-here, client_id: app, client_secret: "{SECRET}"}}
        """)
    with pytest.raises(ToolError) as caught:
        await call(tools, entry, {})
    assert str(caught.value) == (f"the OAuth2 token endpoint {server.url}/nothing-here refused the client "
                                 "credentials (HTTP 404)")
    assert SECRET not in str(caught.value)


async def test_errors_limits_and_redirects(server, tools):
    entries = {entry.name: entry for entry in load_tool(f"""\
        - {{name: fail, type: api, method: GET, url: "{server.url}/fail"}}
        - {{name: big, type: api, method: GET, url: "{server.url}/big"}}
        - {{name: hop, type: api, method: GET, url: "{server.url}/hop"}}
        - {{name: away, type: api, method: GET, url: "{server.url}/away?key={SECRET}"}}
        - {{name: text, type: api, method: GET, url: "{server.url}/text"}}
        - {{name: typed, type: api, url: "{server.url}/echo",
            parameters: {{type: object, properties: {{n: {{type: integer}}}}}}}}
        """)}
    with pytest.raises(ToolError, match=r"answered HTTP 503: upstream down"):
        await call(tools, entries["fail"], {})
    with pytest.raises(ToolError, match=r"more than the 16384 bytes allowed \(TOOL_MAX_RESPONSE_BYTES\)"):
        await call(tools, entries["big"], {})
    assert (await call(tools, entries["hop"], {}))["got"]["query"] == {"hopped": "1"}  # same host: followed
    with pytest.raises(ToolError, match="redirected to another host") as caught:
        await call(tools, entries["away"], {})
    assert SECRET not in str(caught.value)  # the query string is never shown
    assert await call(tools, entries["text"], {}) == "plain words"
    with pytest.raises(ToolError, match=r"arguments.n: 'x' is not of type 'integer'"):
        await call(tools, entries["typed"], {"n": "x"})
    assert not any(r.get("path") == "/echo" and r["json"] == {"n": "x"} for r in server.requests)


async def test_an_unreachable_api_is_an_error_result(tools):
    (entry,) = load_tool("""\
        - {name: gone, type: api, url: "http://127.0.0.1:9/x"}
        """)
    with pytest.raises(ToolError, match=r"POST http://127.0.0.1:9/x failed: Client"):
        await call(tools, entry, {})


def test_a_bad_parameters_schema_is_a_configuration_error():
    text = textwrap.dedent("""\
        name: caller
        agent_type: assistant
        execution_mode: autonomous
        llm_config: {temperature: 0.5}
        system_prompt: Call.
        tools:
          - {name: t, type: api, url: "https://x.example", parameters: {type: object, properties: {n: {type: 7}}}}
        """)
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entry_points=False))
    from agentrunner.agent_loader import AgentConfigError

    with pytest.raises(AgentConfigError) as caught:
        load_agent_text(text, filename="caller.yaml", options=LoaderOptions(), registry=registry)
    assert "caller.yaml: tools[0].parameters: not a valid JSON Schema" in str(caught.value)


async def test_concurrent_calls_share_one_token_fetch(server, tools):
    (entry,) = load_tool(f"""\
        - name: secure
          type: api
          method: GET
          url: {server.url}/secure
          auth: {{type: oauth2, token_url: {server.url}/token, client_id: app, client_secret: s}}
        """)
    (tool,) = await tools.open(entry)
    results = await asyncio.gather(*(tool.call({}) for _ in range(10)))
    assert results == [{"ok": True}] * 10 and server.tokens_issued == 1
