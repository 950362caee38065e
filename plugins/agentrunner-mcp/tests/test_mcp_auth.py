"""Credentials of remote MCP servers (bearer token, API key, OAuth2 client credentials from a local
token endpoint), and secrets kept out of every error message and log line."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mcp_harness import SERVER_SCRIPT
from mcp_servers import free_port

from agentrunner.interfaces import ToolError
from agentrunner.schema import AuthConfig, ToolConfig

CANARY_HEADER = "hdr-canary-5f1e2d3c4b5a"
CANARY_TOKEN = "tok-canary-0a9b8c7d6e5f"
CANARY_QUERY = "qry-canary-77aa88bb99cc"
CANARY_ENV = "env-canary-1234abcd5678"
CANARY_SECRET = "cs-canary-feedbead4242"


class TokenEndpoint:
    """An OAuth2 token endpoint (client credentials) that issues ``tok-1``, ``tok-2``, … and records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, dict[str, str]]] = []
        self._server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return str(self._server.make_url("/oauth/token"))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append((request.headers.get("Authorization"), dict(await request.post())))
        return web.json_response({"access_token": f"tok-{len(self.requests)}", "token_type": "bearer",
                                  "expires_in": 3600})


@pytest.fixture
async def token_endpoint():
    endpoint = TokenEndpoint()
    await endpoint.start()
    yield endpoint
    await endpoint.close()


def oauth2(endpoint: TokenEndpoint, secret: str = "client-secret") -> AuthConfig:
    return AuthConfig(type="oauth2", token_url=endpoint.url, client_id="agentrunner", client_secret=secret,
                      scopes=["tools.read", "tools.call"])


async def add(tool_type, entry) -> object:
    tools = {tool.definition.name: tool for tool in await tool_type.open(entry)}
    return await tools["add"].call({"a": 20, "b": 22})


async def test_a_bearer_token_and_the_entrys_headers_reach_the_server(tool_type, http_target):
    entry = http_target.entry(headers={"X-Custom": "custom-value"},
                              auth=AuthConfig(type="bearer_token", token="bearer-123"))

    assert await add(tool_type, entry) == {"result": 42}
    log = http_target.app.log
    assert log.header_values("authorization") == {"Bearer bearer-123"}
    assert log.header_values("x-custom") == {"custom-value"}


async def test_an_api_key_goes_in_its_header(tool_type, http_target):
    entry = http_target.entry(auth=AuthConfig(type="api_key", key="key-456"))

    assert await add(tool_type, entry) == {"result": 42}
    assert http_target.app.log.header_values("x-api-key") == {"key-456"}
    assert http_target.app.log.header_values("authorization") == set()


async def test_one_oauth2_token_serves_every_server_with_the_same_client(tool_type, served, token_endpoint):
    streamable, sse = served("streamable-http"), served("sse")
    auth = oauth2(token_endpoint)

    assert await add(tool_type, ToolConfig(name="one", type="mcp", url=streamable.url, auth=auth)) == {"result": 42}
    assert await add(tool_type, ToolConfig(name="two", type="mcp", url=sse.url, auth=auth)) == {"result": 42}

    assert streamable.log.header_values("authorization") == {"Bearer tok-1"}
    assert sse.log.header_values("authorization") == {"Bearer tok-1"}
    [(basic, form)] = token_endpoint.requests
    assert basic.startswith("Basic ")
    assert form == {"grant_type": "client_credentials", "scope": "tools.read tools.call"}


async def test_a_refused_oauth2_token_is_replaced_and_the_call_retried_once(tool_type, http_target, token_endpoint):
    log = http_target.app.log
    log.required_authorization = "Bearer tok-1"
    entry = http_target.entry(auth=oauth2(token_endpoint))
    tools = {tool.definition.name: tool for tool in await tool_type.open(entry)}
    assert await tools["add"].call({"a": 1, "b": 1}) == {"result": 2}

    log.required_authorization = "Bearer tok-2"  # the server revoked tok-1

    assert await tools["add"].call({"a": 2, "b": 2}) == {"result": 4}
    assert len(token_endpoint.requests) == 2
    assert http_target.sessions() == 2


async def test_an_oauth2_token_refused_at_connect_is_replaced_once(tool_type, http_target, token_endpoint):
    http_target.app.log.required_authorization = "Bearer tok-2"  # tok-1 is refused from the start

    assert await add(tool_type, http_target.entry(auth=oauth2(token_endpoint))) == {"result": 42}
    assert len(token_endpoint.requests) == 2


async def test_refused_credentials_are_a_tool_error_without_the_secret(tool_type, http_target):
    http_target.app.log.required_authorization = "Bearer the-right-one"
    entry = http_target.entry(auth=AuthConfig(type="bearer_token", token=CANARY_TOKEN))

    with pytest.raises(ToolError, match="is unreachable: HTTP 401: the server refused the credentials") as caught:
        await tool_type.open(entry)
    assert CANARY_TOKEN not in str(caught.value)


async def test_a_token_endpoint_that_refuses_is_a_tool_error(tool_type, http_target):
    auth = AuthConfig(type="oauth2", token_url=f"http://127.0.0.1:{free_port()}/token", client_id="c",
                      client_secret=CANARY_SECRET)

    with pytest.raises(ToolError, match="cannot reach the OAuth2 token endpoint") as caught:
        await tool_type.open(http_target.entry(auth=auth))
    assert CANARY_SECRET not in str(caught.value)


CANARIES = (CANARY_HEADER, CANARY_TOKEN, CANARY_QUERY, CANARY_ENV, CANARY_SECRET, "tok-1")


def assert_no_canary(errors: list[str], logged: str) -> None:
    assert all("unreachable" in error for error in errors), errors
    for canary in CANARIES:
        assert all(canary not in error for error in errors), (canary, errors)
        assert canary not in logged, canary


async def test_remote_secrets_never_reach_errors_or_logs(tool_type, http_target, token_endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    app = http_target.app
    remote = ToolConfig(name="remote", type="mcp", url=f"{app.url}?key={CANARY_QUERY}",
                        headers={"X-Custom": CANARY_HEADER}, auth=AuthConfig(type="bearer_token", token=CANARY_TOKEN))
    tools = {tool.definition.name: tool for tool in await tool_type.open(remote)}
    assert await tools["add"].call({"a": 1, "b": 2}) == {"result": 3}
    assert app.log.header_values("x-custom") == {CANARY_HEADER}
    errors = []
    app.stop()
    with pytest.raises(ToolError) as caught:
        await tools["add"].call({"a": 1, "b": 2})
    errors.append(str(caught.value))

    oauth = ToolConfig(name="oauth", type="mcp", url=f"http://127.0.0.1:{free_port()}/mcp",
                       auth=oauth2(token_endpoint, secret=CANARY_SECRET))
    with pytest.raises(ToolError) as caught:
        await tool_type.open(oauth)
    errors.append(str(caught.value))

    assert_no_canary(errors, caplog.text)


async def test_stdio_env_reaches_the_child_and_never_errors_or_logs(tool_type, caplog):
    caplog.set_level(logging.DEBUG)
    local = ToolConfig(name="local", type="mcp", command=sys.executable, args=[SERVER_SCRIPT],
                       env={"MCP_TEST_VALUE": "visible", "SECRET_TOKEN": CANARY_ENV})
    tools = {tool.definition.name: tool for tool in await tool_type.open(local)}
    assert await tools["echo_env"].call({}) == {"result": "visible"}
    pid = (await tools["pid"].call({}))["result"]
    await tool_type.aclose()  # the server's stderr has been relayed by now
    assert f"test server {pid} starting (token ***)" in caplog.text

    missing = ToolConfig(name="missing", type="mcp", command="/nonexistent/mcp-server", env={"K": CANARY_ENV})
    with pytest.raises(ToolError) as caught:
        await tool_type.open(missing)

    assert_no_canary([str(caught.value)], caplog.text)
