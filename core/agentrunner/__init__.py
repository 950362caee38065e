"""agentrunner: a multi-agent orchestration platform.

Plugin authors need only this module: ``agentrunner.hookimpl`` marks hook
implementations, and the interfaces a plugin implements live in
``agentrunner.interfaces``.
"""

import pluggy

__version__ = "0.1.0"

#: Marks a function as an implementation of an agentrunner hook.
hookimpl = pluggy.HookimplMarker("agentrunner")

__all__ = ["__version__", "hookimpl"]
