"""agentrunner-ollama: the ``ollama`` provider, Ollama's native chat API (``POST {base}/api/chat``).

Registered through the ``agentrunner`` entry point; the provider itself lives in
:mod:`agentrunner_ollama.provider`.
"""

from __future__ import annotations

import agentrunner
from agentrunner_ollama.provider import OllamaProvider

__all__ = ["OllamaProvider", "register_providers"]


@agentrunner.hookimpl
def register_providers(register):
    register(OllamaProvider())
