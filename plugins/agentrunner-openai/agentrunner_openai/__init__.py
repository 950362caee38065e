"""agentrunner-openai: the ``openai`` provider (OpenAI, or any OpenAI-compatible server by base URL).

Registered through the ``agentrunner`` entry point ``openai = agentrunner_openai``.
"""

from __future__ import annotations

import agentrunner
from agentrunner_openai.provider import OpenAIProvider

__all__ = ["OpenAIProvider", "register_providers"]


@agentrunner.hookimpl
def register_providers(register):
    register(OpenAIProvider())
