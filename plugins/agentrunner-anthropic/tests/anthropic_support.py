"""What the anthropic plugin's tests share: the canary key, the reference agent, request builders."""

from __future__ import annotations

import textwrap
from typing import Any

import agentrunner_anthropic

from agentrunner.agent_loader import LoaderOptions, load_agent_text
from agentrunner.interfaces import CompletionRequest, Message
from agentrunner.plugins import Registry, make_plugin_manager
from agentrunner.schema import LLMConfig
from agentrunner.settings import load_settings

#: A key that must never show up in an error, a log line or a stored execution.
CANARY_KEY = "sk-ant-api03-CANARY-7d1f0c9e5b3a48f2a6e4c2b0d8f6e4a2"
MODEL = "claude-3-opus-20240229"

#: The reference's Anthropic example (configuration-reference.md, "LLM Provider Configuration"), as an agent.
REFERENCE_AGENT = """\
name: claude-agent
agent_type: assistant
execution_mode: autonomous
llm_config:
  provider: anthropic
  model: claude-3-opus-20240229  # opus, sonnet, haiku
  temperature: 0.7
  max_tokens: 2000
  top_p: 1.0
  top_k: 40                      # Anthropic-specific parameter
  timeout: 60
system_prompt: |
  You are a helpful AI assistant.
"""


def registry() -> Registry:
    """The default plugins and this one, registered as its entry point would be."""
    return Registry.from_plugin_manager(
        make_plugin_manager(load_entry_points=False, extra_plugins=[(agentrunner_anthropic, "anthropic")]))


def load_agent(text: str, filename: str = "claude.yaml") -> tuple[Any, list[str]]:
    """The agent of a YAML text and its warnings as strings (raises AgentConfigError on errors)."""
    agent, warnings = load_agent_text(textwrap.dedent(text), filename=filename,
                                      options=LoaderOptions(environ={}), registry=registry())
    return agent, [str(warning) for warning in warnings]


def settings(base_url: str | None = None, key: str | None = CANARY_KEY) -> Any:
    environ = {"ANTHROPIC_API_KEY": key or "", **({"ANTHROPIC_BASE_URL": base_url} if base_url else {})}
    return load_settings(environ=environ, env_file=None)


def llm(**fields: Any) -> LLMConfig:
    """An anthropic ``llm_config`` with the schema's defaults where ``fields`` says nothing."""
    return LLMConfig(**{"provider": "anthropic", "model": MODEL, **fields})


def ask(text: str = "Hello", *, system_prompt: str = "You are terse.", messages: list[Message] | None = None,
        tools: tuple = (), **fields: Any) -> CompletionRequest:
    return CompletionRequest(llm_config=llm(**fields), system_prompt=system_prompt,
                             messages=messages if messages is not None else [Message("user", text)], tools=tools)
