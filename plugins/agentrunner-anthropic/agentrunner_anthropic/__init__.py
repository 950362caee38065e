"""agentrunner-anthropic: the ``anthropic`` LLM provider (Claude, through the official ``anthropic`` SDK).

Registered through the ``agentrunner`` entry-point group. The SDK is imported on the
first request, not here, so an installed plugin keeps ``agentrunner --help`` fast.
"""

from __future__ import annotations

import agentrunner
from agentrunner_anthropic.provider import AnthropicProvider

__version__ = "0.1.0"

__all__ = ["AnthropicProvider", "__version__", "register_providers"]


@agentrunner.hookimpl
def register_providers(register):
    register(AnthropicProvider())
