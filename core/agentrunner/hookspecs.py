"""Hook specifications: everything a plugin can add to agentrunner.

Implement them with ``@agentrunner.hookimpl`` in a module named under the
``agentrunner`` entry-point group. Registration hooks receive a ``register``
callback (in the style of ``llm``'s ``register_models``); call it once per
component. Every component has a unique ``name``: two plugins registering the
same name of the same kind stop start-up with an error naming both.

See ``docs/plugin-hooks.md`` for one example per hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from aiohttp import web

hookspec = pluggy.HookspecMarker("agentrunner")

Register = Callable[[Any], None]


# --- Components: called once when the plugin manager is built -------------


@hookspec
def register_providers(register: Register) -> None:
    """Register LLM providers (``agentrunner.interfaces.Provider``), one ``register(provider)`` each."""


@hookspec
def register_tool_types(register: Register) -> None:
    """Register tool types (``agentrunner.interfaces.ToolType``) used in an agent's ``tools:`` list."""


@hookspec
def register_execution_modes(register: Register) -> None:
    """Register execution modes (``agentrunner.interfaces.ExecutionMode``), selected by ``execution_mode``."""


# --- Backends: one of each kind is chosen from the settings at start-up -----


@hookspec
def register_event_buses(register: Register) -> None:
    """Register event-bus backends (``agentrunner.interfaces.EventBusFactory``), chosen by ``EVENT_BUS_BACKEND``."""


@hookspec
def register_state_stores(register: Register) -> None:
    """Register state-store backends (``agentrunner.interfaces.StateStoreFactory``), chosen by ``STATE_BACKEND``."""


@hookspec
def register_caches(register: Register) -> None:
    """Register cache backends (``agentrunner.interfaces.CacheFactory``), chosen by ``CACHE_BACKEND``."""


# --- Outside traffic and extensions of the HTTP API and the CLI -------------


@hookspec
def register_gateways(register: Register) -> None:
    """Register gateways (``agentrunner.interfaces.Gateway``) that turn outside traffic into events."""


@hookspec
def register_routes(app: web.Application) -> None:
    """Add routes to the AgentOrchestrator's aiohttp application (called for every application built)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``agentrunner`` command-line group."""


# --- Lifecycle: called by serve, worker and run -----------------------------


@hookspec
async def startup(platform: Any) -> None:
    """Called once the platform's backends are open, before any task is taken; may be async."""


@hookspec
async def shutdown(platform: Any) -> None:
    """Called when the platform stops, after intake has stopped and before backends close; may be async."""
