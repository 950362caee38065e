"""The pytest plugin agentrunner installs: fixtures for plugin authors, service checks for CI."""

from __future__ import annotations

import socket
import textwrap

import pytest

from agentrunner.testing.pytest_plugin import require_service

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_with_pytest(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("agentrunner")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("ci, outcome", [("true", "failed"), ("", "skipped")])
def test_a_missing_service_skips_or_under_ci_fails(pytester, monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(textwrap.dedent(f"""\
        from agentrunner.testing.pytest_plugin import require_service

        def test_needs_it():
            require_service("PostgreSQL", "127.0.0.1", {_closed_port()})
        """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*PostgreSQL is not reachable at 127.0.0.1:*CI=true*"])


def test_a_reachable_service_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        require_service("something", "127.0.0.1", server.getsockname()[1])


AGENT = textwrap.dedent("""\
    name: echoer
    agent_type: assistant
    execution_mode: autonomous
    llm_config: {temperature: 0.5}
    system_prompt: Echo.
    """)


async def test_the_platform_fixtures_run_a_real_platform(agentrunner_platform, agentrunner_http):
    async with agentrunner_platform(files={"echoer.yaml": AGENT}) as platform:
        async with agentrunner_http(platform) as client:
            response = await client.post("/agents/echoer/tasks", json={"input": "fixture", "wait": 5})
            assert (await response.json())["result"] == "fixture"
