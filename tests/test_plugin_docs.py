"""docs/plugin-hooks.md documents every hook, and its examples work."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from aiohttp import web
from click.testing import CliRunner

from agentrunner import hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin-hooks.md"
HOOKS = sorted(name for name in dir(hookspecs) if isinstance(getattr(hookspecs, name), type(lambda: 0))
               and hasattr(getattr(hookspecs, name), "agentrunner_spec"))


def _sections() -> dict[str, str]:
    parts = re.split(r"^## (\w+)\s*$", DOC.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _example(hook: str) -> dict:
    section = _sections()[hook]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert code, f"the section on {hook} has no Python example"
    namespace: dict = {}
    exec(compile(code.group(1), f"plugin-hooks.md#{hook}", "exec"), namespace)
    return namespace


def test_the_hooks_are_found():
    assert len(HOOKS) == 11


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_with_an_implementing_example(hook):
    assert hook in _sections(), f"docs/plugin-hooks.md has no '## {hook}' section"
    implementation = _example(hook)[hook]
    assert isinstance(implementation, type(lambda: 0))
    assert hasattr(implementation, "agentrunner_impl"), f"the {hook} example is not marked @agentrunner.hookimpl"


@pytest.mark.parametrize("hook", [h for h in HOOKS if h.startswith("register_") and h not in
                                  ("register_routes", "register_commands")])
def test_registration_examples_register_a_named_component(hook):
    registered = []
    _example(hook)[hook](register=registered.append)
    assert len(registered) == 1 and isinstance(registered[0].name, str)


def test_routes_example_adds_a_route():
    app = web.Application()
    _example("register_routes")["register_routes"](app=app)
    assert {(r.method, r.resource.canonical) for r in app.router.routes()} == {("GET", "/hello/version"),
                                                                              ("HEAD", "/hello/version")}


def test_commands_example_adds_a_command():
    group = click.Group("agentrunner")
    _example("register_commands")["register_commands"](cli=group)
    assert CliRunner().invoke(group, ["hello"]).output == "hello\n"


@pytest.mark.parametrize("hook", ["startup", "shutdown"])
async def test_lifecycle_examples_are_awaitable(hook):
    await _example(hook)[hook](platform=object())

