"""The plugin system: factory, default plugins, entry points, conflicts, disabling, laziness."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentrunner
from agentrunner import hookspecs
from agentrunner.plugins import (
    DEFAULT_PLUGINS,
    PluginError,
    Registry,
    make_plugin_manager,
    plugin_infos,
)

CORE = Path(agentrunner.__file__).parent

#: SDKs that plugins must import only inside the methods that use them.
HEAVY_SDKS = ("openai", "anthropic", "aiobotocore", "botocore", "boto3", "mcp", "slack_bolt", "slack_sdk",
              "asyncpg", "redis", "aio_pika", "aiormq", "httpx", "prometheus_client")

#: The modules a plugin may import from the core.
PUBLIC_MODULES = {"agentrunner", "agentrunner.interfaces", "agentrunner.schema", "agentrunner.records",
                  "agentrunner.topics", "agentrunner.hookspecs", "agentrunner.tool_auth", "agentrunner.tool_schema"}


def test_each_call_builds_a_new_manager():
    first, second = make_plugin_manager(load_entry_points=False), make_plugin_manager(load_entry_points=False)
    assert first is not second
    assert first.get_plugins() is not second.get_plugins()


def test_default_plugins_are_registered_under_their_names():
    pm = make_plugin_manager(load_entry_points=False)
    assert set(DEFAULT_PLUGINS) <= {name for name, _ in pm.list_name_plugin()}
    registry = Registry.from_plugin_manager(pm)
    assert set(registry.providers) == {"echo"}
    assert set(registry.tool_types) == {"function", "api"}
    assert set(registry.execution_modes) == {"autonomous", "continuous", "collaborative", "scheduled"}
    assert registry.owners[("provider", "echo")] == "echo"


class _DuplicateEcho:
    name = "echo"
    supported_options = frozenset()


class DuplicateProviderPlugin:
    @agentrunner.hookimpl
    def register_providers(self, register):
        register(_DuplicateEcho())


def test_two_plugins_registering_one_name_is_a_clear_error():
    pm = make_plugin_manager(load_entry_points=False, extra_plugins=[(DuplicateProviderPlugin(), "my-echo")])
    with pytest.raises(PluginError) as excinfo:
        Registry.from_plugin_manager(pm)
    message = str(excinfo.value)
    assert "provider 'echo'" in message and "'echo'" in message and "'my-echo'" in message
    assert "AGENTRUNNER_DISABLED_PLUGINS" in message


def test_a_disabled_plugin_is_not_loaded_and_its_duplicate_is_then_accepted():
    pm = make_plugin_manager(["echo"], load_entry_points=False, extra_plugins=[(DuplicateProviderPlugin(), "my-echo")])
    registry = Registry.from_plugin_manager(pm)
    assert isinstance(registry.providers["echo"], _DuplicateEcho)
    assert registry.owners[("provider", "echo")] == "my-echo"


def test_a_component_without_a_name_is_rejected():
    class Nameless:
        @agentrunner.hookimpl
        def register_tool_types(self, register):
            register(object())

    pm = make_plugin_manager(load_entry_points=False, extra_plugins=[(Nameless(), "nameless")])
    with pytest.raises(PluginError, match="'nameless' registered a tool type without a name"):
        Registry.from_plugin_manager(pm)


def test_a_misspelled_hook_implementation_is_an_error():
    class Misspelled:
        @agentrunner.hookimpl
        def register_provider(self, register):  # missing the final "s"
            pass

    with pytest.raises(PluginError, match="register_provider"):
        make_plugin_manager(load_entry_points=False, extra_plugins=[(Misspelled(), "typo")])


def test_missing_component_names_the_distribution_to_install():
    registry = Registry.from_plugin_manager(make_plugin_manager(load_entry_points=False))
    assert registry.missing("provider", "openai") == (
        "unknown provider 'openai' (installed: echo); install it with: pip install agentrunner-openai"
    )
    assert registry.missing("tool type", "mcp").endswith("pip install agentrunner-mcp")
    assert "install it with" not in registry.missing("provider", "made-up")


def _install_fake_distribution(tmp_path: Path, monkeypatch, module_source: str) -> None:
    """A real installed distribution on sys.path: a module plus dist-info with an entry point."""
    (tmp_path / "agentrunner_shout.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / "agentrunner_shout-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: agentrunner-shout\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[agentrunner]\nshout = agentrunner_shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "agentrunner_shout", raising=False)


SHOUT_PLUGIN = """
    import agentrunner

    class ShoutMode:
        name = "shout"
        async def execute(self, ctx):
            return str(ctx.task.input).upper()

    @agentrunner.hookimpl
    def register_execution_modes(register):
        register(ShoutMode())
"""


def test_entry_point_plugins_are_loaded_and_listed(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, monkeypatch, SHOUT_PLUGIN)
    pm = make_plugin_manager()
    registry = Registry.from_plugin_manager(pm)
    assert registry.owners[("execution mode", "shout")] == "shout"
    info = next(i for i in plugin_infos(pm) if i["name"] == "shout")
    assert info == {"name": "shout", "distribution": "agentrunner-shout", "version": "1.2.3", "default": False,
                    "hooks": ["register_execution_modes"]}


def test_entry_point_plugins_can_be_disabled_by_name(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, monkeypatch, SHOUT_PLUGIN)
    registry = Registry.from_plugin_manager(make_plugin_manager(["shout"]))
    assert "shout" not in registry.execution_modes


def test_a_plugin_that_fails_to_import_is_a_clear_error(tmp_path, monkeypatch):
    _install_fake_distribution(tmp_path, monkeypatch, "raise RuntimeError('broken plugin')\n")
    with pytest.raises(PluginError, match="broken plugin"):
        make_plugin_manager()


def test_loading_every_installed_plugin_imports_no_sdk():
    """`agentrunner --help` stays fast: plugins import their SDKs lazily."""
    code = (
        "import sys\n"
        "from agentrunner.plugins import load_registry\n"
        "load_registry()\n"
        f"print(sorted(m for m in {HEAVY_SDKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _agentrunner_imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "agentrunner":
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "agentrunner"]
    return found


@pytest.mark.parametrize("module", sorted(DEFAULT_PLUGINS.values()))
def test_default_plugins_import_nothing_private(module):
    path = CORE.parent / (module.replace(".", "/") + ".py")
    imports = _agentrunner_imports(path)
    assert imports, f"{module} registers nothing through agentrunner's hooks"
    for imported, names in imports:
        assert imported in PUBLIC_MODULES, f"{module} imports {imported}, which is not a public module"
        assert not [n for n in names if n.startswith("_")], f"{module} imports private names from {imported}"


def test_every_hookspec_has_a_docstring():
    specs = [name for name in dir(hookspecs) if name.startswith(("register_", "startup", "shutdown"))]
    assert len(specs) == 11
    for name in specs:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name
