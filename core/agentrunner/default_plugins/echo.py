"""The built-in ``echo`` provider: answers with the last user message, no network.

It exists so the platform, its examples and its tests run without an API key.
Every ``llm_config`` field is accepted and has no effect on the answer.

It can also show the tool-calling loop: a user message ``/call TOOL {json
arguments}`` naming a tool the agent offers makes it ask for that tool, and the
tool's result (or error) becomes its answer.
"""

from __future__ import annotations

import json

import attrs

import agentrunner
from agentrunner.interfaces import CompletionRequest, CompletionResponse, ToolCall, Usage
from agentrunner.schema import LLMConfig

CALL = "/call "


def _words(text: str) -> int:
    return len(text.split())


class EchoProvider:
    """Replies with the text of the last ``user`` message; usage counts whitespace-separated words."""

    name = "echo"
    supported_options = frozenset(f.name for f in attrs.fields(LLMConfig) if f.name != "explicit_fields")

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        prompt_words = _words(request.system_prompt) + sum(_words(m.content) for m in request.messages)
        model = request.llm_config.model or "echo"
        last = request.messages[-1] if request.messages else None
        if last is not None and last.role == "tool":  # the result of the tool it asked for is the answer
            return CompletionResponse(text=last.content, usage=Usage(prompt_words, _words(last.content)), model=model)
        call = _tool_call(last_user, request) if last is not None and last.role == "user" else None
        if call is not None:
            return CompletionResponse(text="", tool_calls=(call,), usage=Usage(prompt_words, 1), model=model,
                                      finish_reason="tool_calls")
        return CompletionResponse(
            text=last_user,
            usage=Usage(input_tokens=prompt_words, output_tokens=_words(last_user)),
            model=model,
        )

    async def stream(self, request: CompletionRequest):
        """Yield the answer word by word, as a real provider streams deltas, then the whole answer."""
        response = await self.complete(request)
        words = response.text.split(" ")
        for index, word in enumerate(words):
            yield word if index == len(words) - 1 else word + " "
        yield response


def _tool_call(text: str, request: CompletionRequest) -> ToolCall | None:
    """``/call TOOL {json}`` for a tool the agent offers, as a tool call; anything else is None."""
    if not text.startswith(CALL):
        return None
    name, _, arguments = text[len(CALL):].strip().partition(" ")
    if name not in {tool.name for tool in request.tools}:
        return None
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = {"_raw": arguments}
    if not isinstance(parsed, dict):
        parsed = {"_raw": arguments}
    return ToolCall(id=f"echo-{name}", name=name, arguments=parsed)


@agentrunner.hookimpl
def register_providers(register):
    register(EchoProvider())
