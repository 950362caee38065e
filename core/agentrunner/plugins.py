"""The plugin manager factory and the registry of everything plugins provide.

There is no module-global plugin manager: ``make_plugin_manager()`` builds a
new one each call (every test builds its own), registering the default
plugins from inside the package exactly as entry-point plugins are registered.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from agentrunner import hookspecs

ENTRY_POINT_GROUP = "agentrunner"

#: Default plugins, by plugin name → module. Registered like external plugins.
DEFAULT_PLUGINS: dict[str, str] = {
    "echo": "agentrunner.default_plugins.echo",
    "function-tool": "agentrunner.default_plugins.function_tool",
    "api-tool": "agentrunner.default_plugins.api_tool",
    "modes": "agentrunner.default_plugins.modes",
    "memory-bus": "agentrunner.default_plugins.memory_bus",
    "sqlite-store": "agentrunner.default_plugins.sqlite_store",
    "memory-cache": "agentrunner.default_plugins.memory_cache",
}

#: Which distribution provides a well-known component that is not built in.
KNOWN_DISTRIBUTIONS: dict[tuple[str, str], str] = {
    ("provider", "openai"): "agentrunner-openai",
    ("provider", "anthropic"): "agentrunner-anthropic",
    ("provider", "bedrock"): "agentrunner-bedrock",
    ("provider", "ollama"): "agentrunner-ollama",
    ("tool type", "mcp"): "agentrunner-mcp",
    ("state store", "postgres"): "agentrunner-postgres",
    ("cache", "redis"): "agentrunner-redis",
    ("event bus", "rabbitmq"): "agentrunner-rabbitmq",
    ("gateway", "slack"): "agentrunner-slack",
}


class PluginError(Exception):
    """A plugin could not be loaded or conflicts with another one."""


def make_plugin_manager(
    disabled: Iterable[str] = (),
    *,
    load_entry_points: bool = True,
    extra_plugins: Iterable[tuple[Any, str]] = (),
) -> pluggy.PluginManager:
    """Build a plugin manager with the default plugins and installed ones.

    ``disabled`` names plugins to leave out (``AGENTRUNNER_DISABLED_PLUGINS``):
    a default plugin by its name in ``DEFAULT_PLUGINS``, an external one by its
    entry-point name. ``extra_plugins`` are ``(object, name)`` pairs registered
    as well (tests use it). A hook implementation that matches no hook
    specification is an error (``check_pending``).
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    disabled = {name.strip() for name in disabled if name.strip()}
    for name in disabled:
        pm.set_blocked(name)
    for name, module_name in DEFAULT_PLUGINS.items():
        if name not in disabled:
            pm.register(importlib.import_module(module_name), name=name)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # an installed plugin that fails to import
            raise PluginError(f"could not load an agentrunner plugin: {exc!r}") from exc
    for plugin, name in extra_plugins:
        if name not in disabled:
            pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def plugin_infos(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Each registered plugin: its name, distribution, version and implemented hooks."""
    from agentrunner import __version__

    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        infos.append(
            {
                "name": name,
                "distribution": dist.project_name if dist else "agentrunner",
                "version": dist.version if dist else __version__,
                "default": name in DEFAULT_PLUGINS,
                "hooks": hooks,
            }
        )
    return sorted(infos, key=lambda info: (not info["default"], info["name"]))


_KINDS = {
    "provider": "register_providers",
    "tool type": "register_tool_types",
    "execution mode": "register_execution_modes",
    "event bus": "register_event_buses",
    "state store": "register_state_stores",
    "cache": "register_caches",
    "gateway": "register_gateways",
}


@attrs.define
class Registry:
    """Every component the plugins registered, by kind and name."""

    providers: dict[str, Any] = attrs.field(factory=dict)
    tool_types: dict[str, Any] = attrs.field(factory=dict)
    execution_modes: dict[str, Any] = attrs.field(factory=dict)
    event_buses: dict[str, Any] = attrs.field(factory=dict)
    state_stores: dict[str, Any] = attrs.field(factory=dict)
    caches: dict[str, Any] = attrs.field(factory=dict)
    gateways: dict[str, Any] = attrs.field(factory=dict)
    #: (kind, name) → name of the plugin that registered it
    owners: dict[tuple[str, str], str] = attrs.field(factory=dict)

    def table(self, kind: str) -> dict[str, Any]:
        return {
            "provider": self.providers,
            "tool type": self.tool_types,
            "execution mode": self.execution_modes,
            "event bus": self.event_buses,
            "state store": self.state_stores,
            "cache": self.caches,
            "gateway": self.gateways,
        }[kind]

    def missing(self, kind: str, name: str) -> str:
        """A message for a component that is not installed, naming what to install."""
        installed = ", ".join(sorted(self.table(kind))) or "none"
        message = f"unknown {kind} {name!r} (installed: {installed})"
        dist = KNOWN_DISTRIBUTIONS.get((kind, name))
        if dist:
            message += f"; install it with: pip install {dist}"
        return message

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        """Collect every component; two with the same kind and name are an error naming both plugins."""
        registry = cls()
        for kind, hook_name in _KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():

                def register(component: Any, _kind: str = kind, _plugin: str = impl.plugin_name) -> None:
                    name = getattr(component, "name", None)
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"plugin {_plugin!r} registered a {_kind} without a name: {component!r}")
                    previous = registry.owners.get((_kind, name))
                    if previous is not None:
                        raise PluginError(
                            f"{_kind} {name!r} is registered by two plugins: {previous!r} and {_plugin!r}; "
                            f"uninstall one or disable it with AGENTRUNNER_DISABLED_PLUGINS={_plugin}"
                        )
                    registry.owners[(_kind, name)] = _plugin
                    registry.table(_kind)[name] = component

                impl.function(register=register)
        return registry


def load_registry(disabled: Iterable[str] = ()) -> tuple[pluggy.PluginManager, Registry]:
    """Build a plugin manager and collect its registry (what ``serve``, ``validate`` and ``run`` use)."""
    pm = make_plugin_manager(disabled)
    return pm, Registry.from_plugin_manager(pm)
