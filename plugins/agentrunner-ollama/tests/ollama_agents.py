"""Agents for the tests: the reference's Ollama example, and llm_configs loaded the way the platform loads them."""

from __future__ import annotations

import json
from typing import Any

import agentrunner_ollama

from agentrunner.agent_loader import LoaderOptions, load_agent_text
from agentrunner.plugins import Registry, make_plugin_manager

SYSTEM_PROMPT = "You are a helpful assistant running on a local model."

#: configuration-reference.md, "LLM Provider Configuration" → "Ollama (Local)", as a whole agent.
REFERENCE_AGENT = f"""\
name: local-assistant
agent_type: assistant
execution_mode: autonomous
system_prompt: {SYSTEM_PROMPT}
llm_config:
  provider: ollama
  model: llama2                  # Any model installed in Ollama
  temperature: 0.7
  max_tokens: 2000
  timeout: 120                   # Longer timeout for local models

  # Ollama-specific settings
  num_ctx: 4096                  # Context window size
  num_predict: 512               # Maximum tokens to generate
  repeat_penalty: 1.1            # Repetition penalty
"""


def registry() -> Registry:
    """The default plugins and this one, as the entry point would register it."""
    return Registry.from_plugin_manager(
        make_plugin_manager(load_entry_points=False, extra_plugins=[(agentrunner_ollama, "ollama")]))


def load_agent(text: str, *, filename: str = "agent.yaml", strict: bool = False) -> tuple[Any, list[str]]:
    """Load an agent with the real loader; returns it with its warnings as strings."""
    agent, warnings = load_agent_text(text, filename=filename, options=LoaderOptions(strict=strict, environ={}),
                                      registry=registry())
    return agent, [str(warning) for warning in warnings]


def agent_yaml(name: str = "local-assistant", *, extra: str = "", **llm_fields: Any) -> str:
    """An Ollama agent whose llm_config sets exactly ``llm_fields`` (besides provider and model)."""
    llm_config = {"provider": "ollama", "model": "llama2", **llm_fields}
    return (f"name: {name}\nagent_type: assistant\nexecution_mode: autonomous\n"
            f"system_prompt: {SYSTEM_PROMPT}\nllm_config: {json.dumps(llm_config)}\n{extra}")


def llm_config(**llm_fields: Any) -> Any:
    """The llm_config of an agent that sets exactly ``llm_fields`` (so ``explicit_fields`` is what the YAML set)."""
    agent, _ = load_agent(agent_yaml(**llm_fields))
    return agent.llm_config
